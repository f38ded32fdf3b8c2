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
from pathlib import Path

import pytest
from conftest import REPO, child_env, tiny_overrides

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


def test_torchrun_exits_0_after_a_clean_sigterm_checkpoint(small_corpus, small_tokenizer, tmp_path):
    """SIGTERM to the launcher's process group, as a scheduler sends it: workers save, everyone exits 0."""
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
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: checkpoint saved at step" in out
    step = int((tmp_path / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert read_metrics(metrics)[-1]["step"] == step
    assert not (tmp_path / LOCK_FILE).exists()
