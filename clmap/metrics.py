"""Step metrics: JSONL + TensorBoard on rank 0, tokens/s, MFU and peak memory."""

from __future__ import annotations

import json
import resource
from collections.abc import Iterable
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s without sparsity, by the vendors' datasheets (substring of the device name).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of the device, or None where MFU is not meaningful (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def active_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: all of them except input embedding tables, unless
    a table is also the output projection (tied embeddings count once, as the lm_head).

    torchtitan's count (``get_nparams_and_active_nparams``): an embedding lookup does no FLOPs.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = {id(p) for p in output.parameters()} if output is not None else set()
    embedding = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
        if id(p) not in head
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def attention_flops_per_pair(model) -> float:
    """12·L·H·Q: training FLOPs of one query attending one key in every layer (QKᵀ and AV, 2 FLOPs per
    multiply-add, forward + 2× in backward). ``model`` is a Hugging Face causal LM (its ``config``)."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 12.0 * config.num_hidden_layers * heads * head_dim


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token by torchtitan's formula: 6·N + 12·L·H·Q·T.

    N is :func:`active_parameters` (2 FLOPs per multiply-add, forward + 2× in backward), L layers, H
    attention heads of width Q, T the row length: causal attention's QKᵀ and AV matmuls counted over the
    whole row (no discount for causality or for packed documents, no recomputation), as torchtitan does.
    ``model`` is a Hugging Face causal LM (its ``config`` gives L, H, Q). :func:`causal_pairs` gives the
    attention work packed documents actually need (the trainer's second MFU, ``mfu_doc``).
    """
    return 6.0 * active_parameters(model) + attention_flops_per_pair(model) * seq_len


def causal_pairs(seq_lens: Iterable[int]) -> int:
    """(query, key) pairs that document-causal attention computes over sequences of these lengths:
    n·(n + 1)/2 each (a padding tail attends nothing that is needed). A full row of T counts T² in
    :func:`flops_per_token`, so at T = 4096 with documents of ≤ 1024 tokens this is ≤ 1/8 of that."""
    return sum(n * (n + 1) // 2 for n in seq_lens)


def mfu(
    tokens: int, pairs: int | None, seconds: float, flops_tok: float, flops_pair: float, seq_len: int, peak
):
    """(MFU by torchtitan's formula, MFU of the document-causal work) of ``tokens`` trained in ``seconds``
    on devices of ``peak`` FLOP/s in all; the second is None without ``pairs`` (:func:`causal_pairs`)."""
    titan = tokens * flops_tok / seconds / peak
    if pairs is None:
        return titan, None
    needed = tokens * (flops_tok - flops_pair * seq_len) + pairs * flops_pair
    return titan, needed / seconds / peak


def busy_share(intervals: list[tuple[float, float]]) -> float | None:
    """Share of the span from the first interval's start to the last one's end covered by at least one
    interval (overlaps count once); None without intervals."""
    intervals = sorted(i for i in intervals if i[1] > i[0])
    if not intervals:
        return None
    busy, (cur_start, cur_end) = 0.0, intervals[0]
    for start, end in intervals[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    return busy / (max(end for _, end in intervals) - intervals[0][0])


def gpu_busy_share(prof) -> float | None:
    """GPU busy share of a torch.profiler run: :func:`busy_share` of every CUDA activity (kernels, copies)
    over the profiled steps. Below 1: the GPU waited on the host (Python, launches, syncs, data)."""
    return busy_share(
        [
            (e.time_range.start, e.time_range.end)
            for e in prof.events()
            if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA"
        ]
    )


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB (peak RSS)


class MetricLogger:
    """Writes each step's metrics to ``metrics.jsonl`` and TensorBoard (rank 0 only).

    A run that starts at ``start_step`` (a resume) has had its JSONL cut back to that step
    (``clmap.run_folder.repair_logs``); TensorBoard is told the same through ``purge_step``, so events a
    stopped run logged past its last checkpoint are dropped by TensorBoard instead of mixed with the new.
    """

    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The JSONL log as a list of dicts (later lines win when a resumed run re-logs a step)."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
