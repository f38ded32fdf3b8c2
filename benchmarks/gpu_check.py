"""Quick correctness check of the Triton kernels against their fp64 references on a real GPU.

    python -m benchmarks.gpu_check [--device cuda|cpu]

Rule of the tests (FlashAttention / Cut Cross-Entropy): the kernel's max abs error against the fp64
reference may not exceed that of plain PyTorch at the same input dtype plus a slack times
max(1, |ref|); printed (and written) relative to the reference's largest magnitude. A few odd shapes
(not multiples of the block sizes, half the targets ignored), fp32 and bf16, forward and gradients; in
bf16 also the mapping loss with ``accum_dtype=torch.bfloat16`` (``mapping_loss.bf16acc.*``).
Exits 1 if any check fails; rows go to results/gpu_check.csv.
On the CPU (``--device cpu``) the Triton kernels run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

# fp32 as in the tests; bf16 one ulp (2^-8) rather than the tests' 2e-3: a kernel that accumulates in fp32
# and rounds its bf16 gradient once may differ from plain bf16 torch by a full ulp of the largest element.
SLACK = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8}
MAPPING_SHAPES = {
    "cuda": [(1000, 256, 5003), (4099, 512, 32000), (777, 1024, 128256)],
    "cpu": [(37, 16, 101)],
}
POOLED_SHAPES = {"cuda": [(5000, 512, 64), (20011, 1024, 301)], "cpu": [(50, 16, 6)]}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cuda", "cpu"), default=default)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: before importing them
    from benchmarks.common import append_csv, environment_tags

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in MAPPING_SHAPES[args.device]:
            rows += check_mapping_loss(*shape, dtype, args.device)
        for shape in POOLED_SHAPES[args.device]:
            rows += check_pooled(*shape, dtype, args.device)
    tags = environment_tags(args.device)
    append_csv("gpu_check", [{**tags, **r} for r in rows])
    failed = [r for r in rows if not r["ok"]]
    verdict = " — FAILED" if failed else ""
    print(f"gpu_check: {len(rows) - len(failed)}/{len(rows)} within tolerance{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
