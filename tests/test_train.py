"""End-to-end training on the CPU: FSDP2 over gloo, exact resume, HF export, clear config errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, child_env, run_train, tiny_overrides

from clmap.config import ConfigError, load_config
from clmap.launch import train_command
from clmap.metrics import read_metrics

LOSS_KEYS = ["loss/total", "loss/ntp", "loss/cl_forward", "loss/cl_backward", "loss/map"]


def _losses(run_dir):
    return {r["step"]: {k: r[k] for k in LOSS_KEYS} for r in read_metrics(run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def single_run(small_corpus, small_tokenizer, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    run_train(tiny_overrides(small_corpus, small_tokenizer, run_dir), nproc=1)
    return run_dir


def test_single_process_run_logs_every_task_and_exports(single_run):
    records = read_metrics(single_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    first, last = records[0], records[-1]
    for key in LOSS_KEYS + ["group/ntp:cs", "group/cl:en>cs", "group/cl:uk>cs", "tokens_per_s", "grad_norm"]:
        assert key in first, key
    assert 0.0 <= first["map/mean_cos"] <= 1.0
    assert last["loss/total"] < first["loss/total"]  # it learns
    assert "dev/loss/total" in records[2] and "dev/loss/cl" in records[5]
    for pair in ("en-cs", "cs-uk"):
        assert -1.0 <= records[5][f"dev/lac/{pair}"] <= 1.0
    assert (single_run / "hf" / "model.safetensors").is_file()
    assert (single_run / "checkpoints" / "latest").read_text().strip() == "step_00000006"


def test_two_process_fsdp_matches_single_process(single_run, small_corpus, small_tokenizer, tmp_path):
    run_train(tiny_overrides(small_corpus, small_tokenizer, tmp_path), nproc=2)
    one, two = _losses(single_run), _losses(tmp_path)
    assert one.keys() == two.keys()
    for step in one:
        for key in LOSS_KEYS:
            assert two[step][key] == pytest.approx(one[step][key], rel=2e-4, abs=1e-5), (step, key)


def test_sigkill_then_resume_continues_the_same_curve(single_run, small_corpus, small_tokenizer, tmp_path):
    """Kill a 2-process run with SIGKILL after a checkpoint; the resumed run matches the uninterrupted one."""
    overrides = tiny_overrides(
        small_corpus, small_tokenizer, tmp_path, **{"checkpoint.every": 2, "train.steps": 6}
    )
    cmd = train_command(2, overrides)
    env = child_env()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = tmp_path / "checkpoints" / "step_00000002" / "train_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote its first checkpoint"
    # The workers run in their own sessions and outlive the launcher; they are told (SIGTERM on their
    # parent's death), save and exit, releasing the run folder's lock.
    lock = tmp_path / "train.lock"
    while lock.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not lock.exists(), "the workers kept running after their launcher was killed"
    (tmp_path / "checkpoints" / "step_00000099.tmp").mkdir()  # a half-written folder must be ignored
    resumed = run_train(overrides, nproc=2)
    assert "resumed from" in resumed.stdout
    reference, after = _losses(single_run), _losses(tmp_path)
    assert sorted(after) == list(range(1, 7))
    for step in range(3, 7):
        for key in LOSS_KEYS:
            assert after[step][key] == pytest.approx(reference[step][key], rel=2e-4, abs=1e-5), (step, key)


def test_exported_folder_loads_in_transformers_with_the_same_logits(single_run):
    from transformers import AutoModelForCausalLM

    from clmap.checkpoint import Checkpointer
    from clmap.data.tokenizer import load_tokenizer

    hf = AutoModelForCausalLM.from_pretrained(single_run / "hf", local_files_only=True)
    tok = load_tokenizer(single_run / "hf")
    ids = torch.tensor([[tok.bos_id, *tok.encode("Dobrý den, světe"), *tok.lang_tag("en")]])
    logits = hf(ids).logits
    assert logits.shape == (1, ids.shape[1], tok.vocab_size)
    # The same weights straight from the final DCP checkpoint give the same logits.
    import torch.distributed.checkpoint as dcp

    reloaded = AutoModelForCausalLM.from_config(hf.config)
    state = {"model": {f"lm.{k}": v for k, v in reloaded.state_dict().items()}}
    final = Checkpointer(single_run, dist_info=None).latest()
    dcp.load(state, checkpoint_id=str(final))
    reloaded.load_state_dict({k.removeprefix("lm."): v for k, v in state["model"].items()})
    torch.testing.assert_close(reloaded(ids).logits, logits)


def test_config_errors_name_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match="valid keys: lr, min_lr_ratio"):
        load_config(REPO / "configs" / "tiny.toml", ["--optim.lrr=1"])
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        load_config(None, ["--train.steps=ten"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[modle]\nhidden_size = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(bad)


def test_missing_corpus_path_is_a_clear_error(small_tokenizer, tmp_path):
    proc = run_train(tiny_overrides(tmp_path / "nowhere", small_tokenizer, tmp_path / "run"), check=False)
    assert proc.returncode != 0
    assert "nowhere/mono/en/train.jsonl.gz: no such file" in proc.stderr


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(small_corpus, small_tokenizer, tmp_path):
    overrides = tiny_overrides(
        small_corpus, small_tokenizer, tmp_path, **{"checkpoint.every": 1000, "train.steps": 400}
    )
    env = child_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clmap.train", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").read_text().count(
            "\n"
        ) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert "SIGTERM: checkpoint saved" in out
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("_")[1])
    assert 2 <= step < 400
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["step"] == step
