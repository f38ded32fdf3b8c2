"""How much memory a configuration needs, checked before anything large is allocated.

An absurd ``data.seq_len`` (with a ``model.max_position`` to match) would otherwise allocate until the
machine runs out, ending in a ``MemoryError`` traceback minutes later, or in the kernel's OOM killer.
:func:`check_memory` adds up, per process, the parts that grow with the configuration, each a lower
bound of what training really takes (so it refuses only what cannot fit, never a run that would):

* the model and its optimizer state: fp32 weights, gradients and AdamW's two moments, 16 bytes per
  parameter, sharded over the ranks by FSDP;
* the activations kept for the backward pass of one micro-batch, per decoder layer (with activation
  checkpointing only each layer's input);
* the attention mask of packed rows under sdpa / eager (``[B, 1, S, S]``), and eager's score matrix;
* the fused loss's chunk buffer (``clmap.kernels.mapping_loss_chunks.CHUNK_BYTES``);
* the prepared rows: the token, target, group and position arrays of the prefetched global batches.

It is compared with what the device has free: ``MemAvailable`` shared by the processes of this node on
the CPU, ``torch.cuda.mem_get_info`` on a GPU; a configuration that cannot fit stops with one line
naming the biggest parts and the fields that size them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clmap.cli import UserError
from clmap.config import Config


class MemoryEstimateError(UserError):
    """The configuration needs more memory than the device has."""


@dataclass
class Part:
    name: str
    bytes: float
    sized_by: str


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def estimate(cfg: Config, num_params: int, world_size: int, device: torch.device) -> list[Part]:
    """The parts of one process's memory that the configuration sizes (module doc), largest first."""
    from clmap.kernels.mapping_loss_chunks import CHUNK_BYTES

    m, d, t = cfg.model, cfg.data, cfg.train
    from clmap.model import attention_implementation, load_model_config
    from clmap.parallel import resolve_mixed_precision

    compute_bytes = 2 if resolve_mixed_precision(t.mixed_precision, device, num_params) == "bf16" else 4
    tokens = t.micro_batch * d.seq_len  # one micro-batch
    if cfg.model.path:  # the local model's own shapes
        config = load_model_config(m.path)
        hidden, inter = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
        layers, heads = config.num_hidden_layers, config.num_attention_heads
    else:
        hidden, inter, layers, heads = m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads
    per_layer = hidden if t.activation_checkpointing else 4 * hidden + 3 * inter
    attention = attention_implementation(m, device)
    parts = [
        Part("model and optimizer state", 16 * num_params / world_size, "the model's shape"),
        Part("activations", tokens * layers * per_layer * compute_bytes, "train.micro_batch × data.seq_len"),
        Part(
            "rows",
            (t.prefetch_steps + 1) * t.global_batch * d.seq_len * 8 * 4,
            "train.global_batch × data.seq_len",
        ),
        Part("loss chunks", CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"], "the device"),
    ]
    if attention != "flash_attention_2":
        mask = t.micro_batch * d.seq_len**2 * (1 if attention == "sdpa" else 4)
        if attention == "eager":
            mask += t.micro_batch * heads * d.seq_len**2 * compute_bytes
        parts.append(Part("attention mask", mask, "train.micro_batch × data.seq_len²"))
    return sorted(parts, key=lambda p: -p.bytes)


def available_bytes(device: torch.device) -> tuple[float, str] | None:
    """(bytes this process may use, where that figure comes from), or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"free on {torch.cuda.get_device_name(device)}"
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            share = f" shared by {local} processes" if local > 1 else ""
            return int(line.split()[1]) * 1024 / local, f"MemAvailable{share}"
    return None


def check_memory(
    cfg: Config,
    num_params: int,
    world_size: int,
    device: torch.device,
    available: tuple[float, str] | None = None,
) -> list[Part]:
    """Raise :class:`MemoryEstimateError` if the estimate exceeds what is available (module doc)."""
    parts = estimate(cfg, num_params, world_size, device)
    available = available or available_bytes(device)
    need = sum(p.bytes for p in parts)
    if available is not None and need > available[0]:
        biggest = ", ".join(f"{p.name} {gb(p.bytes)} ({p.sized_by})" for p in parts[:3])
        raise MemoryEstimateError(
            f"this configuration needs at least {gb(need)} per process ({biggest}; data.seq_len="
            f"{cfg.data.seq_len}, train.micro_batch={cfg.train.micro_batch}), more than the "
            f"{gb(available[0])} available ({available[1]}); lower data.seq_len or train.micro_batch, or use "
            "more devices or train.activation_checkpointing"
        )
    return parts
