"""Process group set-up and FSDP2 sharding; nothing here that torch.distributed already does."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from clmap.model import fsdp_units
from clmap.objectives import MappingObjective


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the torchrun job, or make a one-process group when run as plain ``python -m clmap.train``.

    A one-process group keeps a single code path: FSDP2 and DCP behave the same at world size 1.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local, dev)


def use_compile(setting: str, device: torch.device) -> bool:
    """``train.compile``: auto compiles on CUDA only (on the CPU the compile time outweighs the gain)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def compile_blocks(blocks: Sequence[torch.nn.Module], model: torch.nn.Module | None = None) -> None:
    """``torch.compile`` each decoder block's forward in place (torchtitan's per-block compile).

    The module tree, and so every state-dict key, stays as it was; FSDP2's hooks run around the compiled
    forward, and blocks of the same class share one compiled graph. ``model`` (the causal LM of the
    blocks): its output-capturing hooks inside the blocks are removed first (:func:`_drop_capture_hooks`).
    """
    if model is not None:
        _drop_capture_hooks(model, blocks)
    for block in blocks:
        block.forward = torch.compile(block.forward)


def _drop_capture_hooks(model: torch.nn.Module, blocks: Sequence[torch.nn.Module]) -> None:
    """transformers ≥ 5 records attention weights with forward hooks on the attention modules, which read
    a ContextVar that dynamo cannot trace: a graph break inside every compiled block (found by
    ``benchmarks.gpu_check --checks step``). The trainer never asks for attention weights, so the hooks
    on modules inside a block are removed; the block's own (run outside its forward: the hidden states the
    mapping term reads) stay. The hooks are installed now, else the first forward would add them."""
    try:
        from transformers.modeling_utils import PreTrainedModel
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # a transformers without output-capturing hooks
        return
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            maybe_install_capturing_hooks(module)
    for block in blocks:
        for module in block.modules():
            if module is block:
                continue
            for key, hook in list(module._forward_hooks.items()):
                if getattr(hook, "__name__", "") == "output_capturing_hook":
                    del module._forward_hooks[key]


def resolve_reshard(setting: str, world_size: int) -> bool:
    """``train.reshard_after_forward``: auto frees gathered parameters after forward only when there is
    something to save (several ranks); on one rank they stay gathered, saving the backward re-gather."""
    return setting == "true" or (setting == "auto" and world_size > 1)


def set_prefetch(blocks: Sequence[torch.nn.Module], depth: int) -> None:
    """Explicit FSDP2 prefetching of the next ``depth`` blocks' all-gathers, forward and backward;
    0 keeps FSDP2's implicit prefetch (the next block's all-gather issued when its hook runs)."""
    if depth <= 0:
        return
    for i, block in enumerate(blocks):
        block.set_modules_to_forward_prefetch(list(blocks[i + 1 : i + 1 + depth]))
        block.set_modules_to_backward_prefetch(list(reversed(blocks[max(0, i - depth) : i])))


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 matmul instructions
# Below this size a CPU step is not matmul-bound and bf16 only adds casts: on a quiet 2-core Xeon with
# AMX-BF16 the 1.8 M-parameter tiny model trained 9,535 and 10,101 tokens/s in fp32 against 8,480 and 9,171
# in bf16, Gemma 3 270M 67.4 in fp32 against 87.4 in bf16 (benchmarks/results/cpu_real_model.csv).
CPU_BF16_MIN_PARAMETERS = 100_000_000


@cache
def cpu_bf16_features() -> tuple[str, ...]:
    """The bf16 instruction sets this CPU names in /proc/cpuinfo's flags (what ``lscpu`` prints)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    lines = (line for line in text.splitlines() if line.startswith("flags"))
    flags = next((line.split(":", 1)[1].split() for line in lines), [])
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def resolve_mixed_precision(setting: str, device: torch.device, num_params: int) -> str:
    """``train.mixed_precision`` as ``"bf16"`` or ``"fp32"``. ``auto`` is bf16 on CUDA, and on a CPU
    with bf16 matmul instructions (AMX-BF16, AVX512-BF16) for a model of at least
    :data:`CPU_BF16_MIN_PARAMETERS`, where bf16 is the faster path; fp32 elsewhere."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and cpu_bf16_features() and num_params >= CPU_BF16_MIN_PARAMETERS:
        return "bf16"
    return "fp32"


def precision_note(setting: str, device: torch.device, num_params: int) -> str | None:
    """One line for the start-up log when ``auto`` picked bf16 on a CPU (a choice made per machine)."""
    if setting != "auto" or device.type != "cpu":
        return None
    if resolve_mixed_precision(setting, device, num_params) == "fp32":
        return None
    return (
        f"train.mixed_precision=auto: bf16 compute on this CPU ({'+'.join(cpu_bf16_features())}, "
        f"{num_params / 1e6:.0f}M parameters); --train.mixed_precision=fp32 keeps fp32"
    )


def shard_model(
    objective: MappingObjective,
    mixed_precision: str,
    activation_checkpointing: bool,
    wrap: Sequence[str] = (),
    *,
    compile: bool = False,
    reshard_after_forward: str = "auto",
    prefetch: int = 0,
) -> MappingObjective:
    """FSDP2: one ``fully_shard`` per unit (the classes in ``wrap``, i.e. ``model.fsdp_wrap``, else the
    model's own ``_no_split_modules``: its decoder blocks), then the root.

    The root group holds the embeddings, final norm and lm_head, so inside the root's forward the
    fused loss sees the whole (unsharded) lm_head weight. FSDP2 never reshards the root after forward.
    ``mixed_precision`` is ``"bf16"`` or ``"fp32"`` (:func:`resolve_mixed_precision`);
    ``compile``, ``reshard_after_forward`` and ``prefetch`` are ``train.compile`` (resolved),
    ``train.reshard_after_forward`` and ``train.fsdp_prefetch``.
    """
    if activation_checkpointing:
        lm, kwargs = objective.lm, {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers ≥ 5 name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if mixed_precision not in ("bf16", "fp32"):
        raise ValueError(f"shard_model takes a resolved precision, bf16 or fp32; got {mixed_precision!r}")
    bf16 = mixed_precision == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": policy} if policy is not None else {}
    units = fsdp_units(objective.lm, wrap)
    if compile:
        compile_blocks(units, objective.lm)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    reshard = resolve_reshard(reshard_after_forward, world_size)
    for i, unit in enumerate(units):
        # The last unit's parameters are needed again right away in backward: keep them gathered.
        fully_shard(unit, reshard_after_forward=reshard and i < len(units) - 1, **kwargs)
    set_prefetch(units, prefetch)
    # The root's inputs are token ids and the step's loss weights: keep the weights fp32 (FSDP would
    # cast floating inputs to bf16 and round every 1/count).
    root_policy = (
        MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
        if bf16
        else None
    )
    fully_shard(objective, **({"mp_policy": root_policy} if root_policy is not None else {}))
    return objective


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op at world size 1) and return it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj, world_size: int) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` outside a process group)."""
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def from_main(obj, world_size: int):
    """Rank 0's ``obj`` on every rank (a decision only rank 0 can take)."""
    if world_size == 1 or not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
