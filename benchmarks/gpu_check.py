"""Quick correctness check of the Triton kernels against their fp64 references on a real GPU, and of packing.

    python -m benchmarks.gpu_check [--device cuda|cpu] [--checks kernels,packing] [--packing-size check|tiny]

Rule of the tests (FlashAttention / Cut Cross-Entropy): the kernel's max abs error against the fp64
reference may not exceed that of plain PyTorch at the same input dtype plus a slack times
max(1, |ref|); printed (and written) relative to the reference's largest magnitude. A few odd shapes
(not multiples of the block sizes, half the targets ignored), fp32 and bf16, forward and gradients; in
bf16 also the mapping loss with ``accum_dtype=torch.bfloat16`` (``mapping_loss.bf16acc.*``).
Exits 1 if any check fails; rows go to results/gpu_check.csv (``step``: step_check.csv), each check's as
soon as it finishes.
On the CPU (``--device cpu``) the Triton kernels run under TRITON_INTERPRET=1.

``packing``: for each attention implementation the trainer can select here (flash_attention_2 if flash-attn
is importable on CUDA, sdpa, and eager on the CPU) and micro-batches of 2 and 4 packed rows, the logits of
every packed sequence (the trainer's mechanism: ``clmap.model.packed_attention_inputs`` on ``collate``'s
boundaries) against the same sequence run alone in fp32, by the same rule as the kernels (alone at the
check's dtype is "plain torch"). The row also records the error of a deliberately unmasked forward
(``leak_rel_err``; it must exceed the tolerance, or the check could not fail) and the forward + backward
time of the mechanism (``packed_ms``) and of rows that carry only restarting position_ids and leave the
boundaries to transformers (``position_ids_ms``; exact for sdpa/eager, leaking for flash_attention_2 at
micro-batch > 1).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import traceback
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError

# fp32 as in the tests; bf16 one ulp (2^-8) rather than the tests' 2e-3: a kernel that accumulates in fp32
# and rounds its bf16 gradient once may differ from plain bf16 torch by a full ulp of the largest element.
SLACK = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8}
MAPPING_SHAPES = {
    "cuda": [(1000, 256, 5003), (4099, 512, 32000), (777, 1024, 128256)],
    "cpu": [(37, 16, 101)],
}
POOLED_SHAPES = {"cuda": [(5000, 512, 64), (20011, 1024, 301)], "cpu": [(50, 16, 6)]}
# Packing check models: (hidden, layers, heads, kv heads, vocab, row length); "tiny" is configs/tiny.toml's.
PACKING_SIZES = {
    "cuda": (512, 4, 8, 4, 4096, 2048),
    "cpu": (32, 2, 4, 2, 101, 64),
    "tiny": (128, 4, 4, 2, 8000, 256),
}
# The step check's models: more blocks than dynamo's recompile limit (8) on CUDA, so a guard that
# specialised per block would leave the last ones in eager and show in the row.
STEP_SIZES = {"cuda": (512, 12, 8, 4, 4096, 2048), "cpu": (32, 3, 4, 2, 101, 64)}


def _errs(a: torch.Tensor, plain: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """Max abs error of the kernel and of plain torch against the reference, and the reference's scale."""
    ref = ref.double()
    return (
        (a.double() - ref).abs().max().item(),
        (plain.double() - ref).abs().max().item(),
        ref.abs().max().item(),
    )


def check_mapping_loss(n: int, h: int, v: int, dtype: torch.dtype, device: str) -> list[dict]:
    from clmap.kernels import mapping_loss, mapping_loss_reference

    gen = torch.Generator().manual_seed(n + v)
    groups_n = 3
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) / h**0.5 * 2
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.5] = -100
    groups = torch.randint(0, groups_n, (n,), generator=gen)
    upstream = torch.rand(groups_n, generator=gen) + 0.5
    targets, groups, upstream = targets.to(device), groups.to(device), upstream.to(device)

    def run(fn, h_in, w_in):
        h_in, w_in = h_in.detach().clone().requires_grad_(), w_in.detach().clone().requires_grad_()
        loss_sum = fn(h_in, w_in)
        gh, gw = torch.autograd.grad((loss_sum * upstream.to(loss_sum.dtype)).sum(), [h_in, w_in])
        return loss_sum.detach(), gh, gw

    def plain(h_in, w_in):
        per_token = F.cross_entropy(h_in @ w_in.t(), targets, reduction="none")
        return torch.zeros(groups_n, device=device).index_add(0, groups, per_token.float())

    h_d, w_d = hidden.to(device, dtype), weight.to(device, dtype)
    ref = run(
        lambda a, b: mapping_loss_reference(a, b, targets, groups, groups_n).loss_sum,
        h_d.double(),
        w_d.double(),
    )
    base = run(plain, h_d, w_d)
    got = run(lambda a, b: mapping_loss(a, b, targets, groups, groups_n, backend="triton").loss_sum, h_d, w_d)

    def weighted(h_in, w_in, accum_dtype=torch.float32):
        """The trainer's call: gradients in the forward walk, here over >= 5 chunks of logits."""
        h_in, w_in = h_in.detach().clone().requires_grad_(), w_in.detach().clone().requires_grad_()
        logit_bytes = accum_dtype.itemsize
        out = mapping_loss(
            h_in,
            w_in,
            targets,
            groups,
            groups_n,
            backend="triton",
            group_weights=upstream,
            chunk_bytes=max(logit_bytes * v, n * v * logit_bytes // 5),
            accum_dtype=accum_dtype,
        )
        return (out.loss_sum, *torch.autograd.grad(out.weighted_loss, [h_in, w_in]))

    rows = []
    for name, a, p, r in zip(("loss_sum", "grad_hidden", "grad_weight"), got, base, ref, strict=True):
        rows.append(_row(f"mapping_loss.{name}", f"{n}x{h}x{v}", dtype, *_errs(a, p, r)))
    variants = [("weighted", torch.float32, 1)]
    if dtype == torch.bfloat16:  # bf16 logits chunks and weight-gradient accumulator (accum_dtype)
        variants.append(("bf16acc", torch.bfloat16, 0))
    for label, accum_dtype, first in variants:
        got_weighted = weighted(h_d, w_d, accum_dtype)
        names = ("loss_sum", "grad_hidden", "grad_weight")[first:]
        for name, a, p, r in zip(names, got_weighted[first:], base[first:], ref[first:], strict=True):
            rows.append(_row(f"mapping_loss.{label}.{name}", f"{n}x{h}x{v}", dtype, *_errs(a, p, r)))
    return rows


def check_pooled(n: int, h: int, s: int, dtype: torch.dtype, device: str) -> list[dict]:
    from clmap.kernels import cosine_matrix, cosine_matrix_reference, paired_cosine, paired_cosine_reference

    gen = torch.Generator().manual_seed(n + s)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype)
    cuts = torch.sort(torch.randperm(n - 1, generator=gen)[: 2 * s - 1] + 1).values
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).to(device)
    starts, ends = bounds[:-1], bounds[1:]
    a, b = (starts[:s], ends[:s]), (starts[s : 2 * s], ends[s : 2 * s])
    upstream = (torch.rand(s, generator=gen) + 0.5).to(device)

    def run(fn, x):
        x = x.detach().clone().requires_grad_()
        out = fn(x)
        (grad,) = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), [x])
        return out.detach(), grad

    ref = run(lambda x: paired_cosine_reference(x, *a, *b), hidden.double())
    base = run(lambda x: paired_cosine_reference(x, *a, *b), hidden)
    got = run(lambda x: paired_cosine(x, *a, *b, backend="triton"), hidden)
    shape = f"{n}x{h}x{s}spans"
    rows = [
        _row("paired_cosine", shape, dtype, *_errs(got[0], base[0], ref[0])),
        _row("paired_cosine.grad", shape, dtype, *_errs(got[1], base[1], ref[1])),
    ]
    with torch.no_grad():
        m_ref = cosine_matrix_reference(hidden.double(), *a, hidden.double(), *b)
        m_base = cosine_matrix_reference(hidden, *a, hidden, *b)
        m_got = cosine_matrix(hidden, *a, hidden, *b, backend="triton")
    rows.append(_row("cosine_matrix", shape, dtype, *_errs(m_got, m_base, m_ref)))
    return rows


def _row(
    kernel: str, shape: str, dtype: torch.dtype, abs_err: float, torch_abs_err: float, scale: float
) -> dict:
    """The tests' rule on absolute errors (slack scaled by max(1, |ref|)); printed relative to |ref|max."""
    ok = abs_err <= torch_abs_err + SLACK[dtype] * max(1.0, scale)
    scale = max(scale, 1e-30)
    limit = torch_abs_err + SLACK[dtype] * max(1.0, scale)
    err, torch_err, tol = abs_err / scale, torch_abs_err / scale, limit / scale
    print(
        f"{'ok  ' if ok else 'FAIL'} {kernel:<24} {shape:<22} {str(dtype):<15} max rel err {err:.3e} "
        f"(plain torch {torch_err:.3e}, limit {tol:.3e})",
        flush=True,
    )
    return {
        "kernel": kernel,
        "shape": shape,
        "dtype": str(dtype).replace("torch.", ""),
        "max_rel_err": f"{err:.3e}",
        "torch_rel_err": f"{torch_err:.3e}",
        "tolerance": f"{tol:.3e}",
        "ok": ok,
    }


def _packing_rows(micro_batch: int, seq_len: int, vocab: int, seed: int):
    """Rows of several sequences (seq_len/16 .. seq_len/3 tokens); odd rows end in a padding tail."""
    from clmap.data.stream import Row

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(micro_batch):
        lens, room = [], seq_len - (r % 2) * (seq_len // 10)
        while room > 0:
            n = min(room, int(torch.randint(max(2, seq_len // 16), seq_len // 3, (1,), generator=gen)))
            lens.append(n)
            room -= n
        pad = seq_len - sum(lens)
        positions = [p for n in lens for p in range(n)] + list(range(pad))
        ids = torch.randint(3, vocab, (seq_len,), generator=gen).tolist()
        rows.append(Row(ids, [-100] * seq_len, positions, [0] * seq_len, [], [], lens))
    return rows


def _small_llama(sizes: tuple[int, int, int, int, int, int], attn: str):
    """A random Llama of ``(hidden, layers, heads, kv_heads, vocab, seq_len)`` (PACKING_SIZES, STEP_SIZES)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, vocab, seq_len = sizes
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=seq_len,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)


def check_packing(impl: str, micro_batch: int, dtype: torch.dtype, device: str, size: str) -> dict:
    """One row: packed sequences vs each alone, the leak of an unmasked forward, and the cost."""
    from benchmarks.common import time_fn
    from clmap.data.stream import collate
    from clmap.model import packed_attention_inputs

    *_, vocab, seq_len = PACKING_SIZES[size]
    torch.manual_seed(0)
    reference_model = _small_llama(PACKING_SIZES[size], "sdpa").to(device).eval()  # fp32 sdpa: the reference
    model = copy.deepcopy(reference_model).to(dtype)
    model.config._attn_implementation = impl
    rows = _packing_rows(micro_batch, seq_len, vocab, seed=micro_batch)
    batch = collate(rows, device)
    ids, positions = batch["input_ids"], batch["position_ids"]

    def packed(layout: str) -> torch.Tensor:
        if layout == "clmap":
            embeds = model.get_input_embeddings()(ids)
            inputs = packed_attention_inputs(
                impl, embeds, positions, batch["cu_seq_lens"], batch["max_seq_len"], model.config
            )
            logits = model(**inputs, use_cache=False).logits
        elif layout == "position_ids":  # boundaries left to transformers' detection
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        else:  # no boundaries at all: one long row, plain positions (must be caught leaking)
            logits = model(input_ids=ids.reshape(1, -1), use_cache=False).logits
        return logits.reshape(ids.numel(), -1)

    sequences = []  # (flat offset, length) of every packed sequence
    for r, row in enumerate(rows):
        starts = torch.tensor([0, *row.seq_lens[:-1]]).cumsum(0).tolist()
        sequences += [(r * seq_len + start, n) for start, n in zip(starts, row.seq_lens, strict=True)]
    flat = ids.flatten()
    with torch.no_grad():
        ref = [reference_model(input_ids=flat[o : o + n][None]).logits[0].double() for o, n in sequences]
        plain = [model(input_ids=flat[o : o + n][None]).logits[0].double() for o, n in sequences]
        got, unmasked = (
            [x[o : o + n].double() for o, n in sequences] for x in (packed("clmap"), packed("unmasked"))
        )

    def err(per_sequence: list[torch.Tensor]) -> float:
        return max((x - r).abs().max().item() for x, r in zip(per_sequence, ref, strict=True))

    scale = max(r.abs().max().item() for r in ref)
    row = _row(f"packing.{impl}", f"{micro_batch}x{seq_len}", dtype, err(got), err(plain), scale)
    leak = err(unmasked) / max(scale, 1e-30)
    row["leak_rel_err"] = f"{leak:.3e}"
    row["ok"] = row["ok"] and leak > float(row["tolerance"])

    def step(layout: str):
        def run():
            model.zero_grad(set_to_none=True)
            packed(layout).float().mean().backward()

        return run

    model.train()
    reps = {"cuda": {}, "cpu": {"warmup": 1, "rep": 5}}[device]
    for layout, key in (("clmap", "packed_ms"), ("position_ids", "position_ids_ms")):
        row[key] = f"{time_fn(step(layout), device=device, **reps).median_ms:.3f}"
    print(
        f"     packing.{impl} {micro_batch}x{seq_len}: unmasked leak {leak:.3e}, forward+backward "
        f"{row['packed_ms']} ms (position_ids only: {row['position_ids_ms']} ms)",
        flush=True,
    )
    return row


# Ops that make the host wait for the device on CUDA: a value read (item/bool/int → _local_scalar_dense),
# and the ops whose output size depends on the data (nonzero, masked_select, unique, bincount without a
# known length, repeat_interleave with tensor repeats). Counted on any device by a dispatch mode, so the
# CPU dry run finds what would sync on a GPU.
SYNC_OPS = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "_unique2", "unique_dim", "equal"}
    | {"unique_consecutive", "is_nonzero"}
)


# Where the CPU path syncs by design, and why; none runs on CUDA, where every counted sync fails the row.
CPU_ONLY_SYNCS = {
    "clmap/kernels/pooled_similarity.py:_pool_spans_torch": "CPU span pooling (CUDA: Triton)",
    "clmap/kernels/pooled_similarity.py:_check_spans": "span value checks, on by default off CUDA only",
}


class SyncCounter(TorchDispatchMode):
    """Counts :data:`SYNC_OPS` (and ``repeat_interleave`` with tensor repeats) dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS or (name == "repeat_interleave" and func._overloadname == "Tensor"):
            self.ops[f"{name}@{_caller()}"] += 1
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    """file:function of the innermost frame in clmap, its kernels or transformers (where a sync is made)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename
        if "site-packages" in path and "/transformers/" in path:
            return f"transformers/{path.split('/transformers/', 1)[1]}:{frame.name}"
        own = path.startswith(repo) and "site-packages" not in path  # not a .venv inside the checkout
        if own and "/benchmarks/" not in path:
            return f"{os.path.relpath(path, repo)}:{frame.name}"
    return "torch"


def _step_rows(global_batch: int, seq_len: int, vocab: int, table, seed: int) -> list:
    """A global batch of packed rows as the stream makes them: NTP documents (loss on every next token) and
    translation pairs ``x <2b> y`` (loss on y, spans x and y paired for the mapping term), then padding."""
    from clmap.data.examples import IGNORE_INDEX
    from clmap.data.stream import Row

    gen = torch.Generator().manual_seed(seed)
    ntp, cl = table["ntp:en"], table["cl:en>cs"]
    rows = []
    for r in range(global_batch):
        ids = torch.randint(3, vocab, (seq_len,), generator=gen).tolist()
        targets, positions, groups, spans, pairs, lens = [], [], [], [], [], []
        room = seq_len - (r % 2) * (seq_len // 10)  # odd rows end in a padding tail
        while room >= 4:
            n = min(room, int(torch.randint(4, max(5, seq_len // 3), (1,), generator=gen)))
            start, half = seq_len - room, n // 2
            if len(lens) % 2:  # a pair: loss on the target half, both halves pooled
                targets += [IGNORE_INDEX] * half + ids[start + half + 1 : start + n] + [IGNORE_INDEX]
                groups += [cl] * n
                pairs.append((len(spans), len(spans) + 1))
                spans += [(start, start + half), (start + half, start + n)]
            else:
                targets += ids[start + 1 : start + n] + [IGNORE_INDEX]
                groups += [ntp] * n
            positions += list(range(n))
            lens.append(n)
            room -= n
        pad = seq_len - sum(lens)
        targets += [IGNORE_INDEX] * pad
        groups += [ntp] * pad
        positions += list(range(pad))
        rows.append(Row(ids, targets, positions, groups, spans, pairs, lens))
    return rows


def check_step(device: str, size: str, warmup: int = 3) -> list[dict]:
    """Rows of the trainer's step (``prepare_step`` + ``train_step``, compiled blocks, FSDP2, the full
    objective) on a small Llama: ``step.compile`` (graphs and cache entries of the decoder blocks' code over
    steps of different row layouts, graph breaks: all blocks must share one graph, none left in eager by
    the recompile limit), ``step.host_syncs`` (ops that wait for the device, counted in one eager step on
    any device), and on CUDA ``step.sync_debug`` (one compiled step under
    ``torch.cuda.set_sync_debug_mode("error")``: the first sync's message, or none)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch._dynamo.utils import counters

    from clmap.config import load_config
    from clmap.data.examples import GroupTable
    from clmap.model import attention_implementation, decoder_layers
    from clmap.objectives import MappingObjective
    from clmap.parallel import init_distributed, shard_model
    from clmap.train import build_optimizer, prepare_step, train_step

    *_, vocab, seq_len = STEP_SIZES[size]
    overrides = [f"--data.seq_len={seq_len}", f"--model.max_position={seq_len}", "--data.languages=en,cs"]
    overrides += ["--data.pairs=en-cs", "--train.global_batch=4", "--train.micro_batch=2"]
    overrides += [f"--train.device={device}", "--train.compile=true", "--objective.lambda_map=0.1"]
    cfg = load_config(None, overrides)
    dist_info = init_distributed(device, "auto")
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    impl = attention_implementation(cfg.model, dist_info.device)
    torch.manual_seed(0)
    lm = _small_llama(STEP_SIZES[size], impl).to(dist_info.device)
    objective = MappingObjective(lm, table, cfg.objective)
    precision = "bf16" if device == "cuda" else "fp32"
    objective = shard_model(objective, precision, False, compile=True)
    optimizer, _ = build_optimizer(objective, cfg)
    batches = [
        prepare_step(_step_rows(4, seq_len, vocab, table, seed), cfg, table, dist_info) for seed in range(8)
    ]
    blocks = decoder_layers(lm)
    code = blocks[0].forward._torchdynamo_orig_callable.__code__  # the blocks' shared code (the cache's key)
    counters.clear()
    for batch in batches[: warmup + 2]:  # different layouts (max_seq_len, spans): nothing may recompile
        train_step(objective, optimizer, batch, cfg, dist_info)
    if device == "cuda":
        torch.cuda.synchronize()
    entries = len(_debug_get_cache_entry_list(code))
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    limit = torch._dynamo.config.recompile_limit
    shape, dtype = f"{len(blocks)}blocks.{4}x{seq_len}", "bf16" if device == "cuda" else "fp32"
    rows = [
        {
            "check": "step.compile",
            "attn": impl,
            "shape": shape,
            "dtype": dtype,
            "value": graphs,
            "detail": f"unique_graphs={graphs} cache_entries={entries} graph_breaks={breaks} "
            f"recompile_limit={limit} steps={warmup + 2}"
            + "".join(f" | break: {reason[:160]}" for reason in list(counters["graph_break"])[:3]),
            # one graph (a second only if a size turned dynamic), no breaks, far from the limit
            "ok": graphs <= 2 and entries <= 2 and breaks == 0 and entries < limit,
        }
    ]
    counter = SyncCounter()
    with torch.compiler.set_stance("force_eager"), counter:  # eager: every op seen, also inside the blocks
        train_step(objective, optimizer, batches[warmup + 2], cfg, dist_info)
    syncs = sum(counter.ops.values())
    allowed = CPU_ONLY_SYNCS if device == "cpu" else {}
    unexpected = sum(n for op, n in counter.ops.items() if op.split("@", 1)[1] not in allowed)
    rows.append(
        {
            "check": "step.host_syncs",
            "attn": impl,
            "shape": shape,
            "dtype": dtype,
            "value": syncs,
            "detail": f"outside CPU-only paths: {unexpected}; "
            + (" ".join(f"{k}={v}" for k, v in sorted(counter.ops.items())) or "none"),
            "ok": unexpected == 0,
        }
    )
    if device == "cuda":
        message = "none"
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            train_step(objective, optimizer, batches[warmup + 3], cfg, dist_info)
        except RuntimeError as err:
            message = str(err).splitlines()[0][:300]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        rows.append(
            {
                "check": "step.sync_debug",
                "attn": impl,
                "shape": shape,
                "dtype": dtype,
                "value": int(message != "none"),
                "detail": message,
                "ok": message == "none",
            }
        )
    for row in rows:
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['check']:<18} {impl:<12} {row['detail']}", flush=True)
    return rows


def packing_backends(device: str) -> list[str]:
    """What the trainer can select on this device: sdpa always, flash_attention_2 with flash-attn on CUDA,
    varlen_attn (torch's varlen flash kernel) on CUDA, eager checked on the CPU (on CUDA it is the slow
    debugging path)."""
    if device == "cpu":
        return ["sdpa", "eager"]
    from clmap.model import VARLEN_KERNEL

    varlen = ["varlen_attn"] if VARLEN_KERNEL is not None else []
    return (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []) + varlen + ["sdpa"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cuda", "cpu"), default=default)
    parser.add_argument(
        "--checks",
        default="kernels,packing",
        help="comma-separated: kernels, packing, step (compile + syncs)",
    )
    parser.add_argument(
        "--packing-size", choices=("check", "tiny"), default="check", help="tiny: configs/tiny.toml's model"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    checks = set(args.checks.split(","))
    if checks - {"kernels", "packing", "step"}:
        raise ConfigError(f"--checks: unknown {sorted(checks - {'kernels', 'packing', 'step'})}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: before importing them
    from benchmarks.common import append_csv, environment_tags, results_folder

    results_folder()
    tags = environment_tags(args.device)
    rows = []

    def done(new: list[dict], name: str = "gpu_check") -> None:
        """Each check's rows are written the moment it finishes: a timeout later loses none of them."""
        append_csv(name, [{**tags, **r} for r in new])
        rows.extend(new)

    if "kernels" in checks:
        for dtype in (torch.float32, torch.bfloat16):
            for shape in MAPPING_SHAPES[args.device]:
                done(check_mapping_loss(*shape, dtype, args.device))
            for shape in POOLED_SHAPES[args.device]:
                done(check_pooled(*shape, dtype, args.device))
    if "packing" in checks:
        size = args.device if args.packing_size == "check" else "tiny"
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32  # the trainer's compute dtype
        for impl in packing_backends(args.device):
            for micro_batch in (2, 4):
                done([check_packing(impl, micro_batch, dtype, args.device, size)])
    if "step" in checks:
        done(check_step(args.device, args.device), "step_check")
    failed = [r for r in rows if not r["ok"]]
    verdict = " — FAILED" if failed else ""
    print(f"gpu_check: {len(rows) - len(failed)}/{len(rows)} within tolerance{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.gpu_check"))
