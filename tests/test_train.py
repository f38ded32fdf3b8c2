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


def _losses(run_dir, keys=LOSS_KEYS):
    return {r["step"]: {k: r[k] for k in keys} for r in read_metrics(run_dir / "metrics.jsonl")}


def _weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "hf" / "model.safetensors")


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
    assert (single_run / "hf" / "model.safetensors").is_file()
    assert (single_run / "checkpoints" / "latest").read_text().strip() == "step_00000006"


def test_two_process_fsdp_matches_single_process(single_run, small_corpus, small_tokenizer, tmp_path):
    """Same losses, same gradient norms (Adam and clipping would hide a gradient off by a constant factor, the
    norm does not) and the same weights at the end."""
    run_train(tiny_overrides(small_corpus, small_tokenizer, tmp_path), nproc=2)
    keys = LOSS_KEYS + ["grad_norm"]
    one, two = _losses(single_run, keys), _losses(tmp_path, keys)
    assert one.keys() == two.keys()
    for step in one:
        for key in keys:
            assert two[step][key] == pytest.approx(one[step][key], rel=2e-4, abs=1e-5), (step, key)
    final_one, final_two = _weights(single_run), _weights(tmp_path)
    # the 2-process export also writes the tied lm_head (a gathered copy, equal to the embeddings)
    assert set(final_two) - set(final_one) <= {"lm_head.weight"}
    if "lm_head.weight" in final_two:
        assert torch.equal(final_two["lm_head.weight"], final_two["model.embed_tokens.weight"])
    for name, weight in final_one.items():
        torch.testing.assert_close(final_two[name], weight, rtol=1e-4, atol=1e-6, msg=name)


def test_dev_lac_equals_lac_of_each_sentence_encoded_alone(single_run, small_corpus, small_tokenizer):
    """The dev LAC logged at the last step (pooled from packed dev rows, final weights) equals LAC computed
    from the exported model with each dev sentence encoded alone as <bos> text: pooling, spans, packing
    and the pair grouping all have to be right."""
    from transformers import AutoModelForCausalLM

    from clmap.data.pipeline import load_texts
    from clmap.data.stream import build_sources
    from clmap.data.tokenizer import load_tokenizer
    from clmap.evaluate.alignment import language_alignment_coefficient, similarity_matrix

    cfg = load_config(None, tiny_overrides(small_corpus, small_tokenizer, single_run))
    logged = read_metrics(single_run / "metrics.jsonl")[-1]
    model = AutoModelForCausalLM.from_pretrained(single_run / "hf", local_files_only=True).eval()
    tok = load_tokenizer(single_run / "hf")
    layer = model.config.num_hidden_layers // 2  # objective.map_layer = -1: the middle layer
    _, parallel = load_texts(cfg, "dev")
    parallel = {k: (a[: cfg.data.dev_pairs], b[: cfg.data.dev_pairs]) for k, (a, b) in parallel.items()}
    sources = build_sources(
        tok, {}, parallel, seq_len=cfg.data.seq_len, max_segment_tokens=cfg.data.max_segment_tokens
    )

    def encode(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([[tok.bos_id, *ids]]), output_hidden_states=True)
        return hidden.hidden_states[layer][0, 1:].mean(0)

    for source in sources:
        pair = source.name.removeprefix("cl:")
        u = torch.stack([encode(src) for src, _ in source.records])
        v = torch.stack([encode(tgt) for _, tgt in source.records])
        lac, _, _ = language_alignment_coefficient(similarity_matrix(u, v), n_boot=0)
        assert logged[f"dev/lac/{pair}"] == pytest.approx(lac, abs=1e-9), pair


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


def test_tokens_per_second_counts_real_tokens_when_pad_equals_eos():
    """Llama-3 pads with eos: a count by pad id would drop every real eos; the row layout does not."""
    from clmap.data.examples import GroupTable
    from clmap.data.stream import Row
    from clmap.parallel import DistInfo
    from clmap.train import StepMetrics, prepare_step

    cfg = load_config(None, ["--train.global_batch=2", "--train.micro_batch=2"])
    table = GroupTable(["en"], [])
    dist_info = DistInfo(0, 1, 0, torch.device("cpu"))
    eos = pad = 2
    row = Row(
        input_ids=[1, 5, eos, 1, 6, 7, eos, pad, pad],
        targets=[5, eos, -100, 6, 7, eos, -100, -100, -100],
        position_ids=[0, 1, 2, 0, 1, 2, 3, 0, 1],
        groups=[0] * 9,
        spans=[],
        pairs=[],
        seq_lens=[3, 4],
    )
    batch = prepare_step([row, row], cfg, table, dist_info)
    assert batch.tokens == 14  # 2 rows × 7 real tokens, the eos tokens included

    class Scheduler:
        def get_last_lr(self):
            return [1e-3]

    step_metrics = StepMetrics(cfg, table, 1000.0, dist_info)
    step_metrics.start -= 2.0  # as if the step took 2 s
    sums, grad_norm = step_metrics.sums.clone(), torch.zeros((), dtype=torch.float64)
    step_metrics.add(sums, grad_norm, torch.tensor(True), batch.tokens, 0.0)
    metrics = step_metrics.read(Scheduler(), nonfinite_total=0)
    assert 6.9 < metrics["tokens_per_s"] <= 7.0  # 14 real tokens over just over 2 s
