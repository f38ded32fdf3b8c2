"""Fault injection: every fault of issue 12 reproduced against the trainer, the store and the evaluator.

Each case asserts the exit status, the message (key words) and, for recoveries, that the loss curve
equals the uninterrupted run. One tiny run is trained once and copied for every case that resumes;
processes start only where the process is the point (exit status, signals, a lock held by another
process), the rest runs in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from copy import copy as shallow_copy
from pathlib import Path

import pytest
import torch
from conftest import DIST_ENV, REPO, child_env, tiny_overrides

from clmap.checkpoint import MANIFEST, Checkpointer
from clmap.cli import run_main
from clmap.config import NOT_COMPARED, SAFE, TRAINED, Config, ConfigError, field_metadata, load_config, option
from clmap.data.readers import DataError, read_monolingual, read_parallel
from clmap.launch import train_command
from clmap.metrics import read_metrics
from clmap.run_folder import HISTORY_FILE, LOCK_FILE, RunFolderInUse, RunLock, config_changes

LOSS_KEYS = ["loss/total", "loss/ntp", "loss/cl_forward", "loss/cl_backward", "loss/map"]
STEPS = 6


def _overrides(corpus, tokenizer, run_dir, **extra) -> list[str]:
    values = {"checkpoint.every": 1, "train.steps": STEPS, "metrics.eval_every": 0, **extra}
    return tiny_overrides(corpus, tokenizer, run_dir, **values)


def _train(args: list[str], shim: str | None = None, **env) -> subprocess.CompletedProcess:
    """``python -m clmap.train ARGS`` (or ``python -c SHIM ARGS``, which patches a fault in, then trains)."""
    cmd = [sys.executable, "-c", shim, *args] if shim else train_command(1, args)
    full_env = {**child_env(), **env}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def _losses(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: {k: r[k] for k in LOSS_KEYS} for r in read_metrics(run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def trained(small_corpus, small_tokenizer, tmp_path_factory) -> Path:
    """The uninterrupted run: 6 steps, a checkpoint every step (step_5 and step_6 kept)."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    proc = _train(_overrides(small_corpus, small_tokenizer, run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def copy(trained, tmp_path):
    """A fresh copy of the trained run folder, and the overrides that resume it."""

    def make(**extra) -> tuple[Path, list[str]]:
        run_dir = tmp_path / "run"
        shutil.copytree(trained, run_dir)
        cfg = json.loads((trained / "config.json").read_text())
        return run_dir, _overrides(cfg["data"]["corpus"], cfg["tokenizer"]["path"], run_dir, **extra)

    return make


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("clmap.")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# -- 1, 2, 9: config drift on resume ----------------------------------------------------------------------
def test_every_config_field_is_classified_for_resume():
    assert {meta["resume"] for meta in field_metadata().values()} <= {SAFE, TRAINED, NOT_COMPARED}
    assert field_metadata()["train.steps"]["resume"] == SAFE
    assert field_metadata()["optim.lr"]["resume"] == TRAINED
    with pytest.raises(TypeError, match="resume must be one of"):
        option(1, "a field declared without its resume class")


def test_changed_model_shape_or_lr_is_refused_and_config_json_kept(copy):
    run_dir, args = copy()
    saved = (run_dir / "config.json").read_text()
    proc = _train([*args, "--model.num_layers=1", "--optim.lr=0.01", "--train.steps=8"])
    assert proc.returncode == 2
    line = _error_line(proc)
    assert "model.num_layers 2 → 1" in line and "optim.lr 0.003 → 0.01" in line
    assert "--resume.allow_changes=model.num_layers,optim.lr" in line
    assert (run_dir / "config.json").read_text() == saved  # a failed resume leaves the contract alone
    assert len(read_metrics(run_dir / "metrics.jsonl")) == STEPS


def test_allowed_lr_change_is_applied_and_recorded(copy):
    run_dir, args = copy()
    leftover = run_dir / "checkpoints" / "step_00000004"  # a prune killed midway left this behind
    leftover.mkdir()
    (leftover / "rng_rank0.pt").write_bytes(b"x")
    proc = _train([*args, "--optim.lr=0.01", "--resume.allow_changes=optim.lr", "--train.steps=7"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "config changes applied from step 6: optim.lr 0.003 → 0.01 (allowed" in proc.stdout
    assert "train.steps 6 → 7" in proc.stdout
    # step 7 is the last of the cosine schedule: min_lr_ratio × the new lr (the old one would give 3e-4)
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["lr"] == pytest.approx(0.1 * 0.01)
    assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == 0.01
    history = [json.loads(line) for line in (run_dir / HISTORY_FILE).read_text().splitlines()]
    assert history[-1]["step"] == 6 and history[-1]["changes"]["optim.lr"] == {
        "old": 0.003,
        "new": 0.01,
        "rule": "trained",
    }
    assert not leftover.exists() and "removed the unfinished checkpoint folder" in proc.stdout


def test_drift_compares_against_defaults_and_ignores_where_the_folder_is():
    cfg = Config()
    saved = cfg.to_dict()
    del saved["data"]["dev_pairs"]  # a field added after the run was started: it had its default then
    saved["run_dir"] = "/elsewhere"
    assert config_changes(saved, cfg) == []
    cfg.train.seed = 1
    assert [(c.key, c.old, c.new, c.rule) for c in config_changes(saved, cfg)] == [
        ("train.seed", 0, 1, "trained")
    ]
    with pytest.raises(ConfigError, match="'model.num_layer' is not a config field .* 'model.num_layers'"):
        load_config(None, ["--resume.allow_changes=model.num_layer"])


# -- 3, 5: no usable checkpoint; damaged newest checkpoint ---------------------------------------------
def test_no_complete_checkpoint_stops_instead_of_restarting(copy):
    run_dir, args = copy()
    for state in (run_dir / "checkpoints").glob("step_*/train_state.json"):
        state.unlink()
    saved = (run_dir / "config.json").read_text()
    proc = _train([*args, "--train.steps=8"])  # a safe change, accepted, but the resume fails: not saved
    assert proc.returncode == 2
    line = _error_line(proc)
    assert (
        f"no usable checkpoint in {run_dir / 'checkpoints'}" in line and "--checkpoint.resume=false" in line
    )
    assert "step_00000006: train_state.json is missing" in line
    assert len(read_metrics(run_dir / "metrics.jsonl")) == STEPS  # nothing appended from step 0
    assert (run_dir / "config.json").read_text() == saved


def test_damaged_newest_checkpoint_falls_back_by_name_with_the_same_curve(copy, trained):
    run_dir, args = copy()
    newest = run_dir / "checkpoints" / "step_00000006"
    with open(newest / "__0_0.distcp", "r+b") as f:
        f.truncate(100)
    (run_dir / "checkpoints" / "latest").write_bytes(b"\xff\xfe garbage")
    proc = _train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoints/latest is unreadable" in proc.stdout
    assert f"skipping checkpoint {newest}: __0_0.distcp has 100 bytes, the manifest says" in proc.stdout
    assert "resumed from" in proc.stdout and "step_00000005 (step 5)" in proc.stdout
    assert (run_dir / "checkpoints" / "step_00000006.damaged").is_dir()
    reference, after = _losses(trained), _losses(run_dir)
    assert after.keys() == reference.keys()
    for key in LOSS_KEYS:
        assert after[STEPS][key] == pytest.approx(reference[STEPS][key], rel=1e-6), key


@pytest.mark.parametrize(
    "damage",
    ["truncate scheduler.pt", "truncate rng_rank0.pt", "garble train_state.json", "delete .metadata"],
)
def test_every_damaged_file_is_named_by_verification(trained, tmp_path, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    action, name = damage.split(" ")
    target = run_dir / "checkpoints" / "step_00000006" / name
    if action == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
    elif action == "garble":
        target.write_text('{"step": 6, "rows": 4' + " " * (target.stat().st_size - 21))  # same size
    else:
        target.unlink()
    checkpointer = Checkpointer(run_dir, None)
    problem, legacy = checkpointer.verify(target.parent)
    assert not legacy and name in problem
    assert checkpointer.verify(run_dir / "checkpoints" / "step_00000005") == (None, False)


# -- 4, 11: config validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.global_batch=-16", "--train.micro_batch=-8"], r"train.global_batch: -16 .* \[1, inf\)"),
        (["--train.micro_batch=0"], r"train.micro_batch: 0 is outside the allowed range \[1, inf\)"),
        (
            ["--data.seq_len=16", "--data.packing=false"],
            r"data.seq_len: 16 is outside the allowed range \[32",
        ),
        (["--optim.lr=-1e-3"], r"optim.lr: -0.001 is outside the allowed range \(0, inf\)"),
        (["--optim.lr=nan"], r"optim.lr: nan is outside"),
        (["--data.ntp_share=1.5"], r"data.ntp_share: 1.5 is outside the allowed range \[0, 1\]"),
        (
            ["--objective.lambda_map=-0.1"],
            r"objective.lambda_map: -0.1 is outside the allowed range \[0, inf\)",
        ),
        (["--optim.beta2=1"], r"optim.beta2: 1.0 is outside the allowed range \[0, 1\)"),
        (["--train.steps=0"], r"train.steps: 0 is outside"),
    ],
)
def test_ranges_are_checked_at_load_with_the_key_and_the_range(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_cli_prints_one_line_and_exits_2_unless_debug(capsys):
    from clmap.train import main

    assert run_main(main, ["--train.micro_batch=0"], "clmap.train") == 2
    err = capsys.readouterr().err
    assert err == "clmap.train: error: train.micro_batch: 0 is outside the allowed range [1, inf)\n"
    with pytest.raises(ConfigError):
        run_main(main, ["--train.micro_batch=0", "--debug"], "clmap.train")


def test_short_rows_that_drop_pairs_are_reported(small_tokenizer, capsys):
    """A row too short for a pair's two directions drops the pair (never cuts it) and says how many."""
    from clmap.data.stream import build_sources
    from clmap.data.tokenizer import load_tokenizer

    tok = load_tokenizer(small_tokenizer)
    long = "The quick brown fox jumps over the lazy dog near the river bank."
    pairs = {"en-cs": ([long] * 3 + ["Yes."], [long] * 3 + ["Ano."])}
    (source,) = build_sources(tok, {}, pairs, seq_len=32, max_segment_tokens=24)
    assert source.dropped == 3 and len(source.records) == 1
    printed = capsys.readouterr().out
    assert "dropped pairs with a side over 6 tokens" in printed and "cl:en-cs 3/4" in printed
    with pytest.raises(ValueError, match="all 3 pairs dropped"):
        build_sources(tok, {}, {"en-cs": ([long] * 3, [long] * 3)}, seq_len=32, max_segment_tokens=24)


# -- 6: disk full -----------------------------------------------------------------------------------------
# Patches os.fsync, which DCP calls on every file it writes, to fail with ENOSPC for step 7's files: the
# trainer's real save path meets the error a full disk gives.
DISK_FULL_SHIM = """
import errno, os, runpy, sys
real_fsync = os.fsync
def fsync(fd):
    if "step_00000007.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_fsync(fd)
os.fsync = fsync
sys.argv = ["clmap.train", *sys.argv[1:]]
runpy.run_module("clmap.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the fault shim reads /proc")
def test_disk_full_during_a_later_save_keeps_earlier_checkpoints(copy):
    run_dir, args = copy()
    proc = _train([*args, "--train.steps=8"], shim=DISK_FULL_SHIM)
    assert proc.returncode == 1
    line = _error_line(proc)
    assert (
        f"no space left on device while saving step 7 to {run_dir / 'checkpoints' / 'step_00000007'}" in line
    )
    assert "removed step_00000007.tmp; the earlier checkpoints are intact" in line
    checkpointer = Checkpointer(run_dir, None)
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert left == ["step_00000005", "step_00000006"]
    for step in (5, 6):
        assert checkpointer.verify(run_dir / "checkpoints" / f"step_{step:08d}") == (None, False)


def test_free_space_is_checked_against_the_previous_checkpoint(trained, monkeypatch):
    import clmap.checkpoint as checkpoint

    monkeypatch.setattr(
        checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000)
    )
    checkpointer = Checkpointer(trained, None)
    problem = checkpointer._space_problem(7, trained / "checkpoints" / "step_00000007")
    size = sum(
        e["size"]
        for e in json.loads((trained / "checkpoints" / "step_00000006" / MANIFEST).read_text())[
            "files"
        ].values()
    )
    assert (
        f"the previous checkpoint step_00000006 takes {checkpoint.human_bytes(size)}, 1.0 KB is free"
        in problem
    )


# -- 7: the run-folder lock -------------------------------------------------------------------------------
def test_a_second_training_on_the_same_folder_fails_naming_the_holder(copy):
    run_dir, args = copy()
    lock = RunLock(run_dir)
    assert lock.acquire() is None
    try:
        proc = _train(args)
    finally:
        lock.release()
    assert proc.returncode == 2
    line = _error_line(proc)
    assert f"{run_dir} is in use by another training: pid {os.getpid()} on host" in line
    assert len(read_metrics(run_dir / "metrics.jsonl")) == STEPS
    first = RunLock(run_dir)
    first.acquire()
    with pytest.raises(RunFolderInUse):  # two holders in one process are refused too
        RunLock(run_dir).acquire()
    first.release()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from clmap.run_folder import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
            "print('locked', flush=True); import time; time.sleep(300)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderInUse, match=f"pid {holder.pid} on host"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = RunLock(tmp_path)
    message = lock.acquire()
    assert message and f"left by pid {holder.pid}" in message and "which no longer runs" in message
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


# -- 8: data errors ---------------------------------------------------------------------------------------
GOOD_PAIR = b'{"src_lang": "en", "tgt_lang": "cs", "src": "Hello", "tgt": "Ahoj"}\n'
LATIN1_PAIR = b'{"src_lang": "en", "tgt_lang": "cs", "src": "caf\xe9", "tgt": "kavarna"}\n'


def _latin1_pairs(path: Path, good_lines: int = 1) -> Path:
    """Valid lines, then one with a Latin-1 byte at byte 48 of the line (past the first read with 200)."""
    path.write_bytes(GOOD_PAIR * good_lines + LATIN1_PAIR)
    return path


def test_non_utf8_training_data_is_one_line_naming_file_line_and_byte(
    small_corpus, small_tokenizer, tmp_path
):
    bad = _latin1_pairs(tmp_path / "pairs.jsonl")
    proc = _train(
        _overrides(small_corpus, small_tokenizer, tmp_path / "run", **{"data.parallel_paths": f"en-cs={bad}"})
    )
    assert proc.returncode == 2
    line = _error_line(proc)
    assert f"{bad}, line 2: not UTF-8 at byte 116 (byte 48 of the line: b'\\xe9')" in line


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("good_lines", [1, 200])  # found by the reader's first look, or while parsing
def test_reader_errors_name_the_file(tmp_path, streaming, good_lines):
    bad = _latin1_pairs(tmp_path / "pairs.jsonl", good_lines)
    at = len(GOOD_PAIR) * good_lines + 48
    with pytest.raises(
        DataError, match=rf"pairs.jsonl, line {good_lines + 1}: not UTF-8 at byte {at} \(byte 48 of"
    ):
        list(read_parallel(bad, streaming=streaming))
    tsv = tmp_path / "train.en-cs.tsv"
    tsv.write_bytes(b"Hello\tAhoj\n" * good_lines + b"caf\xe9\tkavarna\n")
    at = len(b"Hello\tAhoj\n") * good_lines + 3
    with pytest.raises(
        DataError, match=rf"en-cs.tsv, line {good_lines + 1}: not UTF-8 at byte {at} \(byte 3 of"
    ):
        list(read_parallel(tsv, streaming=streaming))
    (tmp_path / "en.txt").write_bytes(b"fine\n" * good_lines + "a real U+FFFD: \ufffd\n".encode())
    assert len(list(read_monolingual(tmp_path / "en.txt", streaming=streaming))) == good_lines + 1
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jsonl: empty file"):
        read_parallel(empty, streaming=streaming)
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"PAR1 not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read as parquet: .*magic bytes"):
        list(read_parallel(parquet, src_lang="en", tgt_lang="cs", streaming=streaming))


def test_bad_bytes_are_located_across_read_chunks(tmp_path):
    from clmap.data.readers import _not_utf8

    valid = b"fine\n" * 220000 + "a real U+FFFD: \ufffd\n".encode()  # 1.1 MB: past the first 1 MiB read
    (tmp_path / "en.txt").write_bytes(valid)
    assert _not_utf8(tmp_path / "en.txt") is None
    (tmp_path / "cs.txt").write_bytes(valid + b"ok \xc3(\n")
    error = str(_not_utf8(tmp_path / "cs.txt"))
    assert "cs.txt, line 220002: not UTF-8 at byte 1100022 (byte 3 of the line: b'\\xc3')" in error


def test_store_build_with_bad_input_exits_2_with_one_line(small_tokenizer, tmp_path, capsys):
    from clmap.data.store import main

    bad = _latin1_pairs(tmp_path / "pairs.jsonl")
    argv = ["build", "--tokenizer", str(small_tokenizer), "--input", str(bad), "--kind", "parallel"]
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith(f"clmap.data.store: error: {bad}, line 2: not UTF-8")


def test_a_pair_file_with_one_language_on_both_sides_is_warned_about(small_corpus, tmp_path, caplog):
    english = read_parallel(small_corpus / "parallel" / "en-cs" / "train.jsonl.gz")["src"]
    copies = tmp_path / "en-cs.jsonl"  # English on both sides: other sentences, not copies
    records = [
        {"src_lang": "en", "tgt_lang": "cs", "src": s, "tgt": t}
        for s, t in zip(english[:150], english[150:300], strict=True)
    ]
    copies.write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level("WARNING"):
        read_parallel(small_corpus / "parallel" / "en-cs" / "train.jsonl.gz")
        assert "look like one language" not in caplog.text  # real en-cs pairs
        read_parallel(copies)
    assert (
        f"{copies}: the en and cs sides look like one language (both sides are in Latin script" in caplog.text
    )


# -- 10: non-finite streak ----------------------------------------------------------------------------------
def test_non_finite_streak_saves_nothing_and_names_the_checkpoint_before_it(
    small_corpus, small_tokenizer, tmp_path
):
    run_dir = tmp_path / "run"
    extra = {"optim.lr": 1e4, "optim.warmup_steps": 0, "train.max_nonfinite_in_a_row": 1, "train.steps": 10}
    proc = _train(_overrides(small_corpus, small_tokenizer, run_dir, **extra))
    assert proc.returncode == 1
    line = _error_line(proc)
    records = read_metrics(run_dir / "metrics.jsonl")
    first_skipped = next(r["step"] for r in records if r["skipped"])
    saved = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))
    assert all(step < first_skipped for step in saved)
    before = f"step_{saved[-1]:08d}" if saved else "none"
    assert "2 non-finite losses in a row" in line and "last checkpoint saved before them: " in line
    assert line.endswith(before)


# -- 11: evaluator on a run folder without hf/; torchrun after SIGTERM ---------------------------------------
def test_evaluating_a_run_folder_without_hf_says_so(trained, tmp_path, capsys):
    from clmap.evaluate.__main__ import main

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir, ignore=shutil.ignore_patterns("hf"))
    assert main(["--checkpoint", str(run_dir), "--tasks", "lac", "--out", str(tmp_path / "eval")]) == 2
    assert f"{run_dir} is a clmap run folder without an hf/ export" in capsys.readouterr().err


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_torchrun_exits_0_after_a_clean_signal_checkpoint(small_corpus, small_tokenizer, tmp_path, signame):
    """SIGTERM to the launcher's process group, as a scheduler sends it, or SIGINT, as Ctrl-C in a terminal
    sends it: workers save, everyone exits 0."""
    args = _overrides(
        small_corpus, small_tokenizer, tmp_path, **{"checkpoint.every": 1000, "train.steps": 400}
    )
    proc = subprocess.Popen(
        train_command(2, args),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    metrics = tmp_path / "metrics.jsonl"
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.1)
    holder = json.loads((tmp_path / LOCK_FILE).read_text())  # rank 0 holds the lock for the whole job
    assert holder["pid"] != proc.pid
    os.killpg(proc.pid, getattr(signal, signame))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"clmap.torchrun: {signame} forwarded to workers" in err
    assert f"{signame}: checkpoint saved at step" in out
    step = int((tmp_path / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert read_metrics(metrics)[-1]["step"] == step
    assert not (tmp_path / LOCK_FILE).exists()


# Every rank's save stops in a sleep after marking the folder named by CLMAP_TEST_SAVING: the second signal
# arrives while the workers save, whatever the machine's speed.
SLOW_SAVE_SHIM = """
import os, runpy, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import clmap.checkpoint
def save(self, step, *args, **kwargs):
    Path(os.environ["CLMAP_TEST_SAVING"], "rank" + os.environ["RANK"]).touch()
    time.sleep(600)
clmap.checkpoint.Checkpointer.save = save
sys.argv = ["clmap.train", *sys.argv[1:]]
runpy.run_module("clmap.train", run_name="__main__", alter_sys=True)
"""


def test_a_second_sigterm_while_the_workers_save_aborts_them_at_once(small_corpus, small_tokenizer, tmp_path):
    """First SIGTERM: the workers start saving; a second one stops them at once (no save, no SIGKILL after
    torchrun's shutdown timeout) and the launcher exits 128 + 15."""
    run_dir, saving = tmp_path / "run", tmp_path / "saving"
    saving.mkdir()
    shim = tmp_path / "slow_save.py"
    shim.write_text(SLOW_SAVE_SHIM.format(repo=str(REPO)))
    args = _overrides(
        small_corpus, small_tokenizer, run_dir, **{"checkpoint.every": 1000, "train.steps": 400}
    )
    launcher = [sys.executable, "-m", "clmap.torchrun", "--standalone", "--nproc_per_node=2", str(shim)]
    proc = subprocess.Popen(
        [*launcher, *args],
        cwd=REPO,
        env={**child_env(), "CLMAP_TEST_SAVING": str(saving)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = run_dir / "metrics.jsonl"

    def wait_for(condition) -> None:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not condition():
            time.sleep(0.1)

    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2)
    os.killpg(proc.pid, signal.SIGTERM)
    wait_for(lambda: len(list(saving.iterdir())) == 2)
    assert sorted(p.name for p in saving.iterdir()) == ["rank0", "rank1"]
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "clmap.torchrun: SIGTERM forwarded to workers" in err
    assert "clmap.torchrun: SIGTERM again: workers aborted without saving" in err, err[-3000:]
    assert "clmap.train: interrupted" in err and "Unable to shutdown process" not in err, err[-3000:]
    assert "checkpoint saved" not in out and not (run_dir / "checkpoints" / "latest").exists()


# -- issue 23, 1: append-only logs are cut back on resume ----------------------------------------------------
def _records(path: Path) -> list[dict]:
    """Every line of a JSONL file as a record: a half line (or a record glued onto one) fails here."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def _back_to_step_5(run_dir: Path) -> None:
    """The run as a stop after step 6's log line but before its checkpoint leaves it."""
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    (run_dir / "checkpoints" / "latest").write_text("step_00000005\n")


def test_resume_cuts_append_only_logs_to_complete_records_and_the_step(copy, trained):
    """A stop after step 6's log line but before its checkpoint, then a crash while step 7's record and a
    start were written: the resumed run's metrics equal the uninterrupted run's, each step once."""
    run_dir, args = copy()
    _back_to_step_5(run_dir)
    metrics, history = run_dir / "metrics.jsonl", run_dir / HISTORY_FILE
    with open(metrics, "a") as f:
        f.write('{"step": 7, "loss/total": 5.')
    with open(history, "a") as f:
        f.write('{"time": "2026-')
    proc = _train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records, reference = _records(metrics), _records(trained / "metrics.jsonl")
    assert [r["step"] for r in records] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    for mine, theirs in zip(records, reference, strict=True):
        assert {k: mine[k] for k in LOSS_KEYS} == pytest.approx({k: theirs[k] for k in LOSS_KEYS}, rel=1e-6)
    starts = _records(history)
    assert [s["step"] for s in starts] == [0, 5] and starts[-1]["resumed_from"].endswith("step_00000005")
    assert (
        f"repaired {metrics}: dropped 1 incomplete or unreadable line and 1 record beyond step 5 (steps 6)"
        in proc.stdout
    )
    assert f"repaired {history}: dropped 1 incomplete or unreadable line" in proc.stdout


def test_tensorboard_events_past_the_resumed_step_are_purged(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clmap.metrics import MetricLogger

    first = MetricLogger(tmp_path, enabled=True)
    for step in range(1, 7):
        first.log(step, {"loss/total": 1.0})
    first.close()
    resumed = MetricLogger(tmp_path, enabled=True, start_step=4)  # steps 5 and 6 are logged again
    for step in (5, 6):
        resumed.log(step, {"loss/total": 2.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("loss/total")]
    assert logged == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 2.0), (6, 2.0)]


# -- issue 23, 2: the evaluator's output folder is locked, its report written atomically ---------------------
def test_a_second_evaluation_into_the_same_out_is_refused(trained, tmp_path, capsys, monkeypatch):
    import clmap.evaluate.__main__ as cli
    from clmap.outputs import OUTPUT_LOCK, output_lock

    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: pytest.fail("evaluated although --out is in use"))
    out = tmp_path / "eval"
    with output_lock(out, "evaluation"):  # the first evaluation, still running
        assert cli.main(["--checkpoint", str(trained), "--tasks", "lac", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{out} is in use by another evaluation: pid {os.getpid()}" in err and OUTPUT_LOCK in err
    assert not (out / OUTPUT_LOCK).exists()  # released with the first


def test_a_report_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from clmap.outputs import atomic_write_text

    report = atomic_write_text(tmp_path / "report.json", '{"old": true}\n')

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(report, '{"new": true}\n')
    assert report.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


# -- issue 23, 3: the memory a configuration needs is checked before it is allocated -------------------------
def test_an_absurd_seq_len_is_refused_at_once_by_name(small_corpus, small_tokenizer, tmp_path, capsys):
    seq_len = 50_000_000
    extra = {"data.seq_len": seq_len, "model.max_position": seq_len}
    status, err = _train_here(_overrides(small_corpus, small_tokenizer, tmp_path / "run", **extra), capsys)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("clmap.train: error: this configuration needs at least"), (
        err
    )
    assert f"data.seq_len={seq_len}" in err and "attention mask" in err
    assert "lower data.seq_len or train.micro_batch" in err
    assert not (tmp_path / "run").exists()


def test_the_memory_estimate_passes_what_fits_and_names_what_does_not():
    from clmap.memory import MemoryEstimateError, check_memory

    cfg = load_config(None, ["--data.seq_len=512", "--model.max_position=512"])
    cpu = torch.device("cpu")
    parts = check_memory(cfg, 10**8, 1, cpu, available=(64e9, "test"))
    assert {p.name for p in parts} >= {"model and optimizer state", "activations", "rows", "loss chunks"}
    assert next(p for p in parts if p.name == "model and optimizer state").bytes == 16 * 10**8
    with pytest.raises(
        MemoryEstimateError, match=r"needs at least 1\.\d GB per process .*more than the 1\.0 GB"
    ):
        check_memory(cfg, 10**8, 1, cpu, available=(1e9, "test"))
    assert check_memory(cfg, 10**8, 2, cpu, available=(1e9, "test"))[0].bytes < 1e9  # sharded over 2 ranks


# -- issue 23, 4: Ctrl-C saves a checkpoint like SIGTERM; a second one aborts --------------------------------
# Sends the signal(s) to the trainer itself right after step 3 is logged: the same moment in every run.
INTERRUPT_SHIM = """
import os, runpy, signal, sys
import clmap.metrics
signals = [getattr(signal, name) for name in os.environ["CLMAP_TEST_SIGNALS"].split(",")]
real_log = clmap.metrics.MetricLogger.log
def log(self, step, metrics):
    real_log(self, step, metrics)
    if step == 3:
        for signum in signals:
            os.kill(os.getpid(), signum)
clmap.metrics.MetricLogger.log = log
sys.argv = ["clmap.train", *sys.argv[1:]]
runpy.run_module("clmap.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("signals", ["SIGINT", "SIGINT,SIGINT"])
def test_ctrl_c_saves_and_resumes_with_the_same_curve_and_twice_aborts(
    small_corpus, small_tokenizer, trained, tmp_path, signals
):
    run_dir = tmp_path / "run"
    args = _overrides(small_corpus, small_tokenizer, run_dir, **{"checkpoint.every": 1000})
    proc = _train(args, shim=INTERRUPT_SHIM, CLMAP_TEST_SIGNALS=signals)
    if signals == "SIGINT,SIGINT":
        assert proc.returncode == 130, proc.stderr[-3000:]
        assert proc.stderr.splitlines()[-1] == "clmap.train: interrupted" and "Traceback" not in proc.stderr
        assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIGINT: saving a checkpoint after this step" in proc.stderr
    assert "SIGINT: checkpoint saved at step 4" in proc.stdout
    proc = _train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_00000004 (step 4)" in proc.stdout
    records, reference = _records(run_dir / "metrics.jsonl"), _records(trained / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for mine, theirs in zip(records, reference, strict=True):
        assert {k: mine[k] for k in LOSS_KEYS} == pytest.approx({k: theirs[k] for k in LOSS_KEYS}, rel=1e-6)


# -- issue 23, 5: an incomplete hf/ export -------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["weights missing", "weights truncated"])
def test_an_incomplete_export_falls_back_to_the_checkpoint_or_is_named(trained, tmp_path, capsys, damage):
    from clmap.checkpoint import init_note, init_source
    from clmap.evaluate.__main__ import main

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    weights = run_dir / "hf" / "model.safetensors"
    if damage == "weights missing":  # a kill during an export of an older clmap
        weights.unlink()
    else:
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    assert init_source(run_dir)[0] == run_dir / "checkpoints" / "step_00000006"
    assert f"{run_dir / 'hf'} is incomplete" in init_note(run_dir)
    assert main(["--checkpoint", str(run_dir), "--tasks", "lac", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run_dir / 'hf'} is an incomplete export" in err
    assert ("has no model.safetensors" if damage == "weights missing" else "its header says") in err


def test_an_export_that_fails_midway_leaves_the_earlier_one_whole(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from clmap.checkpoint import export_hf, hf_problem
    from clmap.parallel import DistInfo

    hf = tmp_path / "hf"
    shutil.copytree(trained / "hf", hf)
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    objective = torch.nn.Module()
    objective.lm = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
    with torch.no_grad():  # other weights than the export's: a partial overwrite would show
        objective.lm.get_input_embeddings().weight.add_(1.0)

    class Killed:  # the tokenizer is written last: the weights are already out when it fails
        def save(self, folder):
            raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        export_hf(objective, Killed(), hf, DistInfo(0, 1, 0, torch.device("cpu")))
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before and hf_problem(hf) is None


# -- issue 23, 6: output locations are checked before the work -----------------------------------------------
def test_outputs_under_a_file_are_one_line_before_any_work(
    trained, small_tokenizer, tmp_path, capsys, monkeypatch
):
    import clmap.data.store as store
    import clmap.evaluate.__main__ as evaluator
    from clmap.experiments import ablation

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(
        evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated before --out was checked")
    )
    monkeypatch.setattr(store, "_tokenizer", lambda *a: pytest.fail("tokenised before --out was checked"))
    monkeypatch.setattr(
        ablation.recipe, "shared_tokenizer", lambda *a: pytest.fail("ran before outputs checked")
    )
    runs = {
        "clmap.evaluate": lambda: evaluator.main(
            ["--checkpoint", str(trained), "--out", str(blocker / "eval")]
        ),
        "clmap.data.store": lambda: store.main(
            [
                "build",
                "--tokenizer",
                str(small_tokenizer),
                "--input",
                str(trained / "config.json"),
                "--kind",
                "mono",
                "--lang",
                "en",
                "--out",
                str(blocker / "store"),
            ]
        ),
        "clmap.experiments.ablation": lambda: run_main(
            ablation.main, ["--out", str(blocker / "runs")], "clmap.experiments.ablation"
        ),
    }
    for prog, run in runs.items():
        assert run() == 2, prog
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
        assert f"{blocker} is a file, not a folder" in err, err


# -- issue 23, 7: one line and exit 2 where the README promises it; the untested contracts ---------------
def _train_here(args: list[str], capsys) -> tuple[int, str]:
    """``clmap.train ARGS`` in this process, for errors found before any training (no process start); the
    one-process group and the environment it sets are undone."""
    import torch.distributed as dist

    from clmap.parallel import cleanup
    from clmap.train import main

    saved = {key: os.environ.get(key) for key in DIST_ENV}
    had_group = dist.is_initialized()
    try:
        status = run_main(main, args, "clmap.train")
    finally:
        if not had_group:
            cleanup()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "case", ["missing corpus", "init-from nowhere", "init-from an empty folder", "unsupported model"]
)
def test_input_errors_are_one_line_and_exit_2(small_corpus, small_tokenizer, tmp_path, capsys, case):
    run_dir = tmp_path / "run"
    corpus, extra, expected = small_corpus, {}, ""
    if case == "missing corpus":
        corpus, expected = (
            tmp_path / "nowhere",
            f"{tmp_path / 'nowhere'}/mono/en/train.jsonl.gz: no such file",
        )
    elif case == "init-from nowhere":
        extra = {"model.init_from": tmp_path / "gone", "tokenizer.path": ""}  # the tokenizer comes with it
        expected = f"model.init_from: {tmp_path / 'gone'} is not a folder"
    elif case == "init-from an empty folder":
        (tmp_path / "empty").mkdir()
        extra = {"model.init_from": tmp_path / "empty", "tokenizer.path": ""}
        expected = f"model.init_from: {tmp_path / 'empty'} has neither a complete hf/ export (no exported hf/"
    else:  # a model folder of an architecture clmap cannot train
        model = tmp_path / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
        extra = {"model.path": model, "tokenizer.path": ""}
        expected = f"model.path {model} (t5) is an encoder-decoder model"
    status, err = _train_here(_overrides(corpus, small_tokenizer, run_dir, **extra), capsys)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("clmap.train: error: ") and expected in err, err
    assert not run_dir.exists()  # a start that fails before writing anything leaves no folder behind


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_a_vocabulary_too_small_for_the_corpus_is_one_line_and_leaves_no_tokenizer(
    small_corpus, tmp_path, capsys, kind
):
    """tokenizer.vocab_size below what the corpus's sample needs (SentencePiece: its characters; byte-level
    BPE: the 256 bytes and the special pieces) is refused by name with the minimum, and the run folder
    keeps no half-written tokenizer that a second start would take for a trained one."""
    run_dir = tmp_path / "run"
    args = _overrides(small_corpus, "", run_dir, **{"tokenizer.vocab_size": 40, "tokenizer.kind": kind})
    status, err = _train_here(args, capsys)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("clmap.train: error: tokenizer.vocab_size=40: "), err
    assert "at least" in err, err
    left = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    assert not [name for name in left if name.startswith("tokenizer")], left


def test_resume_restores_every_rng(tmp_path):
    """Resume continues the random streams where the checkpoint left them (dropout, sampling, shuffles)."""
    import random

    import numpy as np

    from clmap.parallel import DistInfo

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpointer = Checkpointer(tmp_path, DistInfo(0, 1, 0, torch.device("cpu")))
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    saved = checkpointer.save(1, model, optimizer, scheduler, {"rows": 0})

    def draws():
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    after_save = draws()
    draws()  # the stopped run went on drawing
    checkpointer.load(saved, model, optimizer, scheduler)
    assert draws() == after_save


def test_resume_false_sets_the_whole_earlier_run_aside(copy, trained):
    run_dir, args = copy()
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out.tfevents.1").write_bytes(b"earlier")
    old_weights = (run_dir / "hf" / "model.safetensors").read_bytes()
    proc = _train([*args, "--checkpoint.resume=false", "--train.seed=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    aside = [p for p in run_dir.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1, sorted(p.name for p in run_dir.iterdir())
    moved = "checkpoints, metrics.jsonl, tensorboard, hf"
    assert f"checkpoint.resume=false: starting from step 0; moved {moved} to {aside[0]}" in proc.stdout
    assert (aside[0] / "hf" / "model.safetensors").read_bytes() == old_weights
    assert _records(aside[0] / "metrics.jsonl") == _records(trained / "metrics.jsonl")
    assert json.loads((aside[0] / "config.json").read_text())["train"]["seed"] == 0
    assert not (run_dir / "tensorboard").exists()  # this run logs no TensorBoard: nothing of the old mixed in
    assert [r["step"] for r in _records(run_dir / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert (run_dir / "hf" / "model.safetensors").read_bytes() != old_weights


def test_torchrun_passes_a_workers_exit_2_up(small_tokenizer, tmp_path):
    args = _overrides(tmp_path / "nowhere", small_tokenizer, tmp_path / "run")
    proc = subprocess.run(
        train_command(2, args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "clmap.train: error: " in proc.stderr and "no such file" in proc.stderr
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--limit", "-3"], "--limit: -3 is outside the allowed range [1, inf)"),
        (["--batch-size", "0"], "--batch-size: 0 is outside the allowed range [1, inf)"),
        (["--few-shot", "-1"], "--few-shot: -1 is outside the allowed range [0, inf)"),
    ],
)
def test_evaluator_counts_are_checked_against_their_meaning(tmp_path, capsys, argv, message):
    from clmap.evaluate.__main__ import main

    assert main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "eval"), *argv]) == 2
    assert capsys.readouterr().err == f"clmap.evaluate: error: {message}\n"


def test_a_resume_at_or_past_train_steps_trains_nothing_and_changes_nothing(copy):
    run_dir, args = copy()
    saved = (run_dir / "config.json").read_text()
    export = {p.name: p.stat().st_mtime_ns for p in (run_dir / "hf").iterdir()}
    metrics = (run_dir / "metrics.jsonl").read_text()
    proc = _train([*args, "--train.steps=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"nothing to train: {run_dir} is at step 6 and train.steps=4; config.json and hf/ left as they are"
        in proc.stdout
    )
    assert (run_dir / "config.json").read_text() == saved  # still says train.steps=6, the steps trained
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "hf").iterdir()} == export
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def test_a_save_failing_for_another_reason_names_it_and_keeps_the_earlier(tmp_path, monkeypatch):
    """Not only a full disk: any I/O error during a save removes the partial folder and says so."""
    import errno

    from clmap.checkpoint import CheckpointSaveError
    from clmap.parallel import DistInfo

    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpointer = Checkpointer(tmp_path, DistInfo(0, 1, 0, torch.device("cpu")))
    first = checkpointer.save(1, model, optimizer, scheduler, {"rows": 0})

    def failing_disk(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_disk)
    with pytest.raises(CheckpointSaveError) as raised:
        checkpointer.save(2, model, optimizer, scheduler, {"rows": 0})
    monkeypatch.undo()
    message = str(raised.value)
    assert message.startswith(f"failed to save step 2 to {tmp_path / 'checkpoints' / 'step_00000002'} (")
    assert "Input/output error" in message and "no space" not in message
    assert f"removed step_00000002.tmp; the earlier checkpoints are intact (newest: {first})" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert checkpointer.verify(first) == (None, False)


def test_a_replaced_tokenizer_is_named_as_such_not_as_a_model_change(trained, small_tokenizer):
    from clmap.data.tokenizer import load_tokenizer
    from clmap.run_folder import ConfigDriftError, check_tokenizer

    checkpoint = trained / "checkpoints" / "step_00000006"
    tok = load_tokenizer(small_tokenizer)
    check_tokenizer(checkpoint, tok, str(small_tokenizer))  # the one it trained with

    replaced = shallow_copy(tok)  # the same size and special ids, another vocabulary (tag style here)
    replaced.tag_format = "<to_{lang}>"
    with pytest.raises(ConfigDriftError, match="the same vocabulary size, another vocabulary"):
        check_tokenizer(checkpoint, replaced, "TOK")
    replaced.vocab_size = 700
    with pytest.raises(
        ConfigDriftError,
        match=rf"the tokenizer at TOK is not the one {checkpoint} was trained with \(vocabulary",
    ):
        check_tokenizer(checkpoint, replaced, "TOK")


def test_a_choice_file_with_too_few_rows_names_the_file_the_pair_and_the_count():
    from clmap.evaluate.clnlu import translation_choice_items
    from clmap.evaluate.sources import EvalDataError, ParallelSegment

    rows = [ParallelSegment("d", f"src {i}", f"tgt {i % 2}") for i in range(3)]
    with pytest.raises(
        EvalDataError,
        match=r"^pairs\.jsonl: en→cs translation choice needs at least 4 distinct target .*found 2 in 3",
    ):
        translation_choice_items(None, rows, "en", "cs", source="pairs.jsonl")


def test_a_run_folder_is_named_as_such_where_a_model_is_expected(trained, tmp_path, capsys):
    from clmap.evaluate.__main__ import main
    from clmap.model import ModelPathError, load_model_config

    with pytest.raises(ModelPathError, match=f"model.path: {trained} is a clmap run folder, not a model"):
        load_model_config(trained)
    bare = tmp_path / "run"  # neither checkpoints nor hf/: only its config and logs
    shutil.copytree(trained, bare, ignore=shutil.ignore_patterns("hf", "checkpoints"))
    assert main(["--checkpoint", str(bare), "--tasks", "lac", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bare} is a clmap run folder without an hf/ export" in err, err


# -- issue 23: the ablation checks every argument before any work ------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "x"], "--seeds: expected a comma list of int values, got 'x'"),
        (["--budgets", "0"], "--budgets: expected int values of at least 1, got '0'"),
        (["--stage-lr", "1e-3"], "--stage-lr [0.001]: expected two learning rates"),
        (["--eval-limit", "-1"], "--eval-limit: -1 is outside the allowed range [0, inf)"),
        (["--jobs", "0"], "--jobs: 0 is outside the allowed range [1, inf)"),
        (["--variants", "nope"], "--variants: "),
        (["--tasks", "mt,bogus"], "--tasks: unknown task(s) ['bogus']"),
        (["--pairs", "en"], "--pairs: language pair 'en' is not of the form 'src-tgt'"),
        (["--splits", "a-b"], "--splits 'a-b': expected a comma list of split names"),
        (["--splits", "test,bogus"], "--splits bogus: no such split in the bundled corpus (it has dev, "),
        (["--eval-batch-size", "0"], "--eval-batch-size: 0 is outside the allowed range [1, inf)"),
        (["--data", "mt"], "--data 'mt': expected TASK=PATH"),
        (["--data", "bogus=x"], "--data keys ['bogus'] unknown"),
        (["--tokenizer", "/nonexistent/tok"], "--tokenizer /nonexistent/tok: no such file or folder"),
    ],
)
def test_the_ablation_refuses_a_bad_argument_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    from clmap.experiments import ablation

    monkeypatch.setattr(ablation.recipe, "shared_tokenizer", lambda *a: pytest.fail("ran before the check"))
    folders = ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]
    assert run_main(ablation.main, [*folders, *argv], "clmap.experiments.ablation") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clmap.experiments.ablation: error: {message}"), err


@pytest.mark.parametrize("preset", ["cpu", "gpu", "gemma"])
def test_every_preset_passes_the_ablations_argument_checks(tmp_path, monkeypatch, preset):
    from clmap.experiments import ablation

    class Reached(Exception):
        pass

    def reached(*args):
        raise Reached

    monkeypatch.setattr(ablation.recipe, "shared_tokenizer", reached)
    with pytest.raises(Reached):
        ablation.main(["--preset", preset, "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")])


def test_auto_precision_with_bf16_loss_chunks_is_refused_where_auto_means_fp32(tmp_path, capsys):
    """The 1.8 M tiny model computes in fp32 under auto on any CPU: bf16 loss chunks are refused at start."""
    args = ["--config", str(REPO / "configs" / "tiny.toml"), f"--run_dir={tmp_path / 'run'}"]
    status, err = _train_here([*args, "--objective.loss_accum_dtype=bf16", "--train.steps=1"], capsys)
    assert status == 2 and "train.mixed_precision=auto means fp32 on this device" in err, err


# -- issue 23: map_separation, the demo and the benchmarks check every argument before any work -----------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--limit", "0"], "--limit: 0 is outside the allowed range [1, inf)"),
        (["--batch-size", "0"], "--batch-size: 0 is outside the allowed range [1, inf)"),
        (["--temperature", "0"], "--temperature: 0.0 is outside the allowed range (0, inf)"),
        (["--layer", "3"], "--layer=3 is outside -1..2"),
        (["--model", "NOWHERE"], "--model NOWHERE: checkpoint folder does not exist"),
        (["--model", ""], "--model is required"),
        (
            ["--pairs", "en-xx"],
            "--pairs en-xx --splits test: no en-xx parallel data in the bundled test split",
        ),
        (
            ["--splits", "test,bogus"],
            "--pairs en-cs --splits bogus: no en-cs parallel data in the bundled bogus",
        ),
        (["--out", "OUT.md"], "--out OUT.md: expected a .json file"),
        (["--out", "FILE/m.json"], "--out's folder FILE is not writable (FILE is a file, not a folder)"),
        (["--cache", "FILE"], "--cache FILE: not a cache this command wrote"),
        (["--table-only", "--out", "OUT.json"], "--out OUT.json: no such file or folder"),
    ],
)
def test_map_separation_refuses_a_bad_argument_before_the_model_loads(
    trained, tmp_path, capsys, monkeypatch, argv, message
):
    import clmap.evaluate.lm as lm
    from clmap.experiments import map_separation

    monkeypatch.setattr(lm, "load_checkpoint", lambda *a, **k: pytest.fail("loaded before the check"))
    (tmp_path / "FILE").write_text("not a cache")
    defaults = ["--model", str(trained), "--pairs", "en-cs", "--splits", "test", "--out", "OUT.json"]
    args = [*defaults, *argv]  # a flag given twice: argparse keeps the case's
    for name, path in {"NOWHERE": "nowhere", "FILE": "FILE", "OUT": "out"}.items():
        args = [a.replace(name, str(tmp_path / path)) for a in args]
        message = message.replace(name, str(tmp_path / path))
    assert map_separation.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clmap.experiments.map_separation: error: {message}"), err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nproc", "0"], "--nproc: 0 is outside the allowed range [1, inf)"),
        (["--eval-limit", "0"], "--eval-limit: 0 is outside the allowed range [1, inf)"),
        (["--train.steps=0"], "train.steps: 0 is outside the allowed range [1, inf)"),
        (
            ["--nproc", "3"],
            "train.global_batch (16) must be a multiple of train.micro_batch × world size (8 × 3)",
        ),
        (["--config", "NOWHERE.toml"], "NOWHERE.toml: config file not found"),
        (["--run-dir", "FILE/run"], "--run-dir FILE/run is not writable (FILE is a file, not a folder)"),
    ],
)
def test_the_demo_refuses_a_bad_argument_before_it_starts_a_process(
    tmp_path, capsys, monkeypatch, argv, message
):
    from clmap import demo

    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: pytest.fail("started before the check"))
    (tmp_path / "FILE").write_text("")
    args = ["--run-dir", str(tmp_path / "run"), *argv]
    for name in ("NOWHERE", "FILE"):
        args = [a.replace(name, str(tmp_path / name)) for a in args]
        message = message.replace(name, str(tmp_path / name))
    assert demo.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clmap.demo: error: {message}"), err


def test_the_demo_passes_a_failing_steps_exit_status_up_without_a_traceback(tmp_path, capsys, monkeypatch):
    from clmap import demo

    started = []

    def fails(cmd, **kwargs):
        started.append(cmd)
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(demo.subprocess, "run", fails)
    assert demo.main(["--run-dir", str(tmp_path / "run"), "--train.steps=2"]) == 2
    assert len(started) == 1 and "clmap.train" in started[0]  # the evaluation never started
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("data_index", ["--capacity", "0"], "--capacity: 0 is outside the allowed range [1, inf)"),
        ("data_index", ["--seed", "-1"], "--seed: -1 is outside the allowed range [0, inf)"),
        ("mapping_loss", ["--rep", "0"], "--rep: 0 is outside the allowed range [1, inf)"),
        ("mapping_loss", ["--passes", "bwd"], "--passes: unknown ['bwd']; choose from fwd+bwd, fwd"),
        ("mapping_loss", ["--impls", "clmap@x"], "--impls: unknown implementation 'clmap@x'"),
        ("mapping_loss", ["--shapes", "8,8"], "--shapes '8,8': expected N,H,V (three positive ints)"),
        ("pooled_similarity", ["--threads", "-1"], "--threads: -1 is outside the allowed range [0, inf)"),
        ("report", ["--results", "NOWHERE"], "--results NOWHERE: no such file or folder"),
        ("gpu_check", ["--device", "cpu", "--checks", "bogus"], "--checks: unknown ['bogus']"),
        ("baselines", ["--case", "x"], "--case 'x': expected a JSON object with impl one of plain, titan"),
        ("train_throughput", ["--nproc", "0"], "--nproc: 0 is outside the allowed range [1, inf)"),
        ("train_throughput", ["--nproc", "3"], "train.global_batch (16) must be a multiple of"),
        ("train_throughput", ["--train.stepz=3"], "command line.train: unknown key 'stepz'"),
        ("train_throughput", ["--work", "FILE/w"], "--work FILE/w is not writable (FILE is a file"),
        ("cpu_real_model", ["--model", "tiny", "--warmup", "3"], "--warmup: 3 leaves no measured step below"),
        (
            "cpu_real_model",
            ["--model", "tiny", "--optim.lr=-1"],
            "optim.lr: -1.0 is outside the allowed range",
        ),
        ("data_index", ["RESULTS"], "the results folder (CLMAP_BENCH_OUT) FILE/results is not writable"),
    ],
)
def test_the_benchmarks_refuse_a_bad_argument_before_any_work(
    tmp_path, capsys, monkeypatch, module, argv, message
):
    import importlib

    import benchmarks.common

    bench = importlib.import_module(f"benchmarks.{module}")
    (tmp_path / "FILE").write_text("")
    results = tmp_path / "FILE" / "results" if argv == ["RESULTS"] else tmp_path / "results"
    monkeypatch.setattr(benchmarks.common, "RESULTS_DIR", results)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("started a process before the check"))
    small = {  # what runs if the check is missing stays small
        "data_index": ["--num-samples", "10", "--num-lengths", "10"],
        "mapping_loss": ["--shapes", "8,8,8", "--impls", "naive", "--passes", "fwd"],
        "pooled_similarity": ["--quick", "--no-reference", "--device", "cpu"],
    }.get(module, [])
    args = [*small, *(a for a in argv if a != "RESULTS")]
    for name in ("NOWHERE", "FILE"):
        args = [a.replace(name, str(tmp_path / name)) for a in args]
        message = message.replace(name, str(tmp_path / name))
    assert run_main(bench.main, args, f"benchmarks.{module}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"benchmarks.{module}: error: {message}"), err


def test_a_split_the_bundled_corpus_lacks_everywhere_is_refused_before_the_model_loads(
    trained, tmp_path, capsys, monkeypatch
):
    """A typo'd --split skipped every pair with a note after the model was loaded, and exited 0."""
    import clmap.evaluate.lm as lm
    from clmap.evaluate.__main__ import main

    monkeypatch.setattr(lm, "load_checkpoint", lambda *a, **k: pytest.fail("loaded before the check"))
    argv = [
        "--checkpoint",
        str(trained),
        "--tasks",
        "lac",
        "--split",
        "test,tset",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    known = "dev, ood, test, train"
    assert (
        err == f"clmap.evaluate: error: --split tset: no such split in the bundled corpus (it has {known})\n"
    )
