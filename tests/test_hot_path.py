"""The training step's hot path: no host synchronisation, data prepared ahead, compile and FSDP2 wiring,
the MFU formula and the GPU busy share."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clmap.config import ConfigError, load_config
from clmap.data.prefetch import Prefetcher
from clmap.metrics import active_parameters, flops_per_token, gpu_busy_share
from clmap.model import build_model
from clmap.objectives import MappingObjective
from clmap.parallel import resolve_reshard, shard_model, use_compile
from clmap.train import NonfiniteGuard, NonFiniteLoss, build_optimizer, prepare_step, step_counts, train_step

REPO = Path(__file__).resolve().parent.parent
OURS = (str(REPO / "clmap") + os.sep,)
# What reads a device value on the host (a sync on CUDA), and what copies host memory to the device in
# a way that waits for the queue (a blocking .to(device) or torch.tensor(..., device=...)).
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")
# Host syncs that remain inside a step, outside the trainer, with the reason. A sync anywhere else fails.
KNOWN_SYNCS = {
    # the CPU path of span pooling needs the total span length on the host (CUDA runs the Triton kernel)
    ("clmap/kernels/pooled_similarity.py", "_pool_spans_torch"),
    # transformers infers packed documents from restarting position_ids and asks the host whether it
    # found any (per micro-batch on the versions that do), until the batch passes its attention inputs
    ("transformers/masking_utils.py", "find_packed_sequence_indices"),
}


def _where(frame) -> tuple[str, str]:
    """(file relative to the repository or to site-packages, function) of a frame."""
    path = frame.f_code.co_filename
    if path.startswith(str(REPO) + os.sep) and "site-packages" not in path:
        path = Path(path).relative_to(REPO).as_posix()
    elif "site-packages" + os.sep in path:
        path = path.split("site-packages" + os.sep, 1)[1]
    return path, frame.f_code.co_name


def _ours(frame) -> bool:
    return frame.f_code.co_filename.startswith(OURS)


@contextmanager
def recorded_host_syncs():
    """Record every host read of a tensor value (anywhere) and every blocking host→device copy written in
    clmap's own code, as ``(file, function, what)``. On the CPU nothing waits, so the pattern is what is
    checked: each of these waits for the GPU queue on CUDA."""
    calls: list[tuple[str, str, str]] = []
    saved = {name: torch.Tensor.__dict__.get(name) for name in (*READS, "to")}
    original_tensor = torch.tensor

    def reader(name):
        method = getattr(torch.Tensor, name)

        def patched(self, *args, **kwargs):
            calls.append((*_where(sys._getframe(1)), name))
            return method(self, *args, **kwargs)

        return patched

    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        frame = sys._getframe(1)
        moves = any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args) or "device" in kwargs
        if _ours(frame) and moves and not kwargs.get("non_blocking", False):
            calls.append((*_where(frame), "blocking .to(device)"))
        return original_to(self, *args, **kwargs)

    def tensor(*args, **kwargs):
        frame = sys._getframe(1)
        if _ours(frame) and kwargs.get("device") is not None:
            calls.append((*_where(frame), "torch.tensor(device=...)"))
        return original_tensor(*args, **kwargs)

    for name in READS:
        setattr(torch.Tensor, name, reader(name))
    torch.Tensor.to, torch.tensor = to, tensor
    try:
        yield calls
    finally:
        torch.tensor = original_tensor
        for name, value in saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)


@pytest.fixture(scope="module")
def setup(training_setup):
    return training_setup


def _model(setup, **shard):
    cfg, dist_info, tok, table, _ = setup
    torch.manual_seed(0)
    objective = MappingObjective(build_model(cfg.model, tok, dist_info.device), table, cfg.objective)
    objective = shard_model(objective, "fp32", False, **shard)
    return objective, *build_optimizer(objective, cfg)


def test_train_step_never_reads_the_device(setup):
    cfg, dist_info, tok, table, rows = setup
    objective, optimizer, _ = _model(setup)
    gb = cfg.train.global_batch
    batches = [prepare_step(rows[i * gb : (i + 1) * gb], cfg, table, dist_info) for i in range(2)]
    train_step(objective, optimizer, batches[0], cfg, dist_info)  # lazy initialisation happens once
    guard = NonfiniteGuard(limit=5, total=0, device=dist_info.device)
    with recorded_host_syncs() as calls:
        sums, grad_norm, finite = train_step(objective, optimizer, batches[1], cfg, dist_info)
        guard.add(finite)
    found = Counter(calls)
    unexpected = {call: n for call, n in found.items() if call[:2] not in KNOWN_SYNCS}
    assert not unexpected, f"host syncs inside train_step: {unexpected}"
    with recorded_host_syncs() as check:  # the recorder itself sees a read
        torch.ones(2).sum().item()
    assert check == [("tests/test_hot_path.py", "test_train_step_never_reads_the_device", "item")]
    # The step's results are device tensors, read later (at log time) in one go.
    assert all(isinstance(t, torch.Tensor) for t in (sums, grad_norm, finite)) and bool(finite)
    assert guard.check(last_saved=None) == (0, 0)


def test_nonfinite_guard_counts_exactly_and_stops_past_the_limit_in_a_row():
    guard = NonfiniteGuard(limit=2, total=3, device=torch.device("cpu"))
    for ok in (True, False, False, True, False, False):  # two runs of 2: at the limit, not past it
        guard.add(torch.tensor(ok))
    assert guard.check(last_saved=None) == (3 + 4, 2)  # ends inside a run of 2: no checkpoint now
    guard.add(torch.tensor(False))  # continues the run of 2 across the check: 3 in a row
    guard.add(torch.tensor(True))
    with pytest.raises(NonFiniteLoss, match="3 non-finite losses in a row.*saved before them: ck"):
        guard.check(last_saved="ck")


def test_fused_skip_leaves_adamw_exactly_as_before():
    """The device-side skip: with found_inf set, fused AdamW changes neither parameters nor its state."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.found_inf = torch.zeros(())
    optimizer.step()
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()]
    model(torch.randn(2, 4)).sum().backward()
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    for p, before, st in zip(model.parameters(), params, state, strict=True):
        torch.testing.assert_close(p.detach(), before)
        for k, v in st.items():
            torch.testing.assert_close(optimizer.state[p][k], v)


def test_step_counts_match_the_rows(setup):
    cfg, _, _, table, rows = setup
    counts, pairs = step_counts(rows[:8], len(table))
    expected = torch.zeros(len(table), dtype=torch.float64)
    for row in rows[:8]:
        for target, group in zip(row.targets, row.groups, strict=True):
            if target != -100:
                expected[group] += 1
    torch.testing.assert_close(counts, expected)
    assert pairs == sum(len(r.pairs) for r in rows[:8])


def test_prepare_step_splits_this_ranks_rows_into_micro_batches(setup):
    cfg, dist_info, tok, table, rows = setup
    gb, mb = cfg.train.global_batch, cfg.train.micro_batch
    batch = prepare_step(rows[:gb], cfg, table, dist_info)
    assert len(batch.micro) == gb // mb and all(m["input_ids"].shape[0] == mb for m in batch.micro)
    assert batch.tokens == sum(sum(r.seq_lens) for r in rows[:gb])
    assert batch.micro[1]["input_ids"][0].tolist() == rows[mb].input_ids
    two_ranks = SimpleNamespace(rank=1, world_size=2, device=dist_info.device)
    second = prepare_step(rows[:gb], cfg, table, two_ranks)
    assert second.micro[0]["input_ids"][0].tolist() == rows[gb // 2].input_ids
    torch.testing.assert_close(second.coef, batch.coef)  # weights come from the whole step


def test_prefetcher_runs_ahead_in_order_and_reraises():
    made = []

    def make():
        made.append(len(made))
        if len(made) == 6:
            raise KeyError("bad row")
        return made[-1]

    with Prefetcher(make, depth=2) as ahead:
        assert next(ahead) == 0
        deadline = time.time() + 10
        while len(made) < 3 and time.time() < deadline:  # it prepared 2 more while nobody asked
            time.sleep(0.01)
        assert len(made) == 3
        assert [next(ahead) for _ in range(4)] == [1, 2, 3, 4]
        with pytest.raises(KeyError, match="bad row"):
            next(ahead)
    assert not any(t.name == "clmap-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetch_wait_is_the_data_time():
    """A slow producer shows as time blocked in next(): what the trainer reports as data time."""
    with Prefetcher(lambda: time.sleep(0.2) or 1, depth=1) as slow:
        next(slow)
        start = time.perf_counter()
        next(slow)
        assert time.perf_counter() - start > 0.1


def test_compile_reshard_and_prefetch_settings(setup):
    assert use_compile("auto", torch.device("cpu")) is False
    assert use_compile("auto", torch.device("cuda")) and use_compile("true", torch.device("cpu"))
    assert not use_compile("false", torch.device("cuda"))
    assert resolve_reshard("auto", 1) is False and resolve_reshard("auto", 2) and resolve_reshard("true", 1)
    objective, _, _ = _model(setup, compile=True, reshard_after_forward="true", prefetch=1)
    layers = objective.lm.model.layers
    assert all(hasattr(layer.forward, "_torchdynamo_orig_callable") for layer in layers)
    assert layers[0]._get_fsdp_state()._states_to_forward_prefetch == [layers[1]._get_fsdp_state()]
    assert all(k.startswith("lm.") and "_orig_mod" not in k for k in objective.state_dict())
    with pytest.raises(ConfigError, match="train.prefetch_steps"):
        load_config(None, ["--train.prefetch_steps=0"])
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["--train.compile=maybe"])


def test_compiled_blocks_train_like_eager_on_the_cpu(setup, monkeypatch):
    """train.compile=true: two steps through dynamo-captured blocks under FSDP2 give eager's losses.

    Dynamo's capture (graph breaks, FSDP2 hooks around the compiled forward, one graph shared by the
    blocks) is what is tested; inductor's code generation takes minutes on this CPU, so the captured
    graphs run with the eager backend here (the GPU suite runs inductor)."""
    import torch._dynamo

    cfg, dist_info, tok, table, rows = setup
    gb = cfg.train.global_batch
    batches = [prepare_step(rows[i * gb : (i + 1) * gb], cfg, table, dist_info) for i in range(2)]
    compile_with = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_with(fn, backend="eager", **kw))
    torch._dynamo.reset()
    losses = {}
    for compiled in (False, True):
        objective, optimizer, _ = _model(setup, compile=compiled)
        losses[compiled] = [train_step(objective, optimizer, b, cfg, dist_info)[0] for b in batches]
    for eager, compiled in zip(losses[False], losses[True], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 1, "nothing was compiled"


def test_flops_per_token_is_torchtitans_formula():
    from transformers import LlamaConfig, LlamaForCausalLM

    def model(tied: bool):
        config = LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=tied,
        )  # fmt: skip
        return LlamaForCausalLM(config)

    per_layer = 32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64 + 2 * 32  # q,o + k,v + MLP + 2 norms
    body = 2 * per_layer + 32  # + final norm
    attention = 12 * 2 * 4 * 8 * 128  # 12 · L · H · Q · T
    # Tied: the one table is the lm_head and counts once; untied: the input table does no FLOPs.
    assert active_parameters(model(True)) == body + 100 * 32
    assert active_parameters(model(False)) == body + 100 * 32
    assert flops_per_token(model(True), 128) == 6 * (body + 100 * 32) + attention


def test_gpu_busy_share_is_the_union_of_device_intervals():
    def event(start, end, device="CUDA"):
        return SimpleNamespace(
            device_type=SimpleNamespace(name=device), time_range=SimpleNamespace(start=start, end=end)
        )

    # Kernels at [0, 10] and [5, 20] overlap (20 busy), then a gap, then [30, 40]: 30 of 40.
    events = [event(30, 40), event(0, 10), event(5, 20), event(0, 100, device="CPU")]
    assert gpu_busy_share(SimpleNamespace(events=lambda: events)) == pytest.approx(0.75)
    assert gpu_busy_share(SimpleNamespace(events=lambda: [event(0, 5, "CPU")])) is None
