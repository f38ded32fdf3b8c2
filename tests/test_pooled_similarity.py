"""Pooled embedding similarity: every backend against a float64 oracle, by the relative rule.

Rule (FlashAttention / CCE): an implementation's error against the fp64 reference may not exceed the
error of the plain PyTorch reference run at the same input dtype plus a small tolerance. The reference
itself is checked against an independent dense computation (span-membership matrix products).
Triton runs on the CPU under TRITON_INTERPRET=1, so shapes stay small.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import clmap.kernels.pooled_similarity as ps  # noqa: E402
import clmap.kernels.pooled_similarity_backward_triton as bwd  # noqa: E402
import clmap.kernels.pooled_similarity_forward_triton as fwd  # noqa: E402
from clmap.kernels.pooled_similarity import (  # noqa: E402
    cosine_matrix,
    cosine_matrix_reference,
    paired_cosine,
    paired_cosine_reference,
    pool_spans,
    pool_spans_reference,
)
from clmap.kernels.pooled_similarity_spans import make_spans  # noqa: E402

#: The implementations measured against the fp64 oracle; the reference is checked against an independent
#: dense computation instead (test_reference_matches_dense_oracle), and all three in the contract tests.
FAST_BACKENDS = ["triton", "torch"]
BACKENDS = FAST_BACKENDS + ["reference"]
DTYPES = [torch.float32, torch.bfloat16]
#: The "small tolerance" of the rule, times the largest true value (not max(1, |truth|): most gradients
#: here are far below 1, where that floor would exceed the values themselves). fp32: about 8 ulps; bf16 and
#: fp16: a quarter ulp. A kernel that accumulates in fp32 and rounds once matches plain PyTorch's error
#: to that; one that truncates instead of rounding is half an ulp worse and fails.
SLACK = {torch.float32: 1e-6, torch.bfloat16: 2.0**-10, torch.float16: 2.0**-12}
N, H = 47, 31  # not multiples of any block size


def _spans(kind: str, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Span sets: 'edge' = length-1 spans, one covering everything, overlaps; 'many' = 64 random spans;
    'disjoint' = training-like partition of part of the rows."""
    if kind == "edge":
        starts = [0, 5, 10, n - 1, 0, 20, 25, 3]
        ends = [5, 12, 11, n, n, 40, 30, 4]
    elif kind == "many":
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(0, n, (64,), generator=g)
        b = torch.randint(0, n, (64,), generator=g)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b) + 1
        return lo, hi.clamp(max=n)
    elif kind == "disjoint":
        starts, ends = [1, 9, 17, 18, 30], [9, 17, 18, 30, 46]
    else:
        raise KeyError(kind)
    return torch.tensor(starts), torch.tensor(ends)


def _hidden(dtype: torch.dtype, n: int = N, h: int = H, seed: int = 0) -> torch.Tensor:
    """Offset (anisotropic, like LLM states) hidden states in ``dtype``; their fp64 copy is exact."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=torch.float64) + 0.5
    return x.to(dtype)


def _err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return (x.double() - truth).abs().max().item()


def _assert_relative(
    out: torch.Tensor, plain: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """The project's rule: error against the fp64 truth <= plain PyTorch's own error + a small slack."""
    tol = SLACK[dtype] * truth.abs().max().item()
    e_out, e_plain = _err(out, truth), _err(plain, truth)
    assert e_out <= e_plain + tol, f"{what}: error {e_out:.3g} vs plain PyTorch {e_plain:.3g} + {tol:.3g}"


def _run(fn, hidden: torch.Tensor, upstream_seed: int = 1):
    """Forward ``fn(hidden)`` and backward with a random upstream gradient; returns (out, grad)."""
    leaf = hidden.detach().clone().requires_grad_(True)
    out = fn(leaf)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    out.backward(g.to(out.dtype))
    return out.detach(), leaf.grad


def _check(fn_backend, fn_reference, dtype: torch.dtype, hidden_seed: int = 0) -> None:
    """Compare fn_backend(hidden at dtype) with fn_reference at fp64 and fn_reference at dtype."""
    hidden = _hidden(dtype, seed=hidden_seed)
    truth, truth_grad = _run(fn_reference, hidden.double())
    plain, plain_grad = _run(fn_reference, hidden)
    out, grad = _run(fn_backend, hidden)
    assert out.dtype == torch.float32 and out.shape == truth.shape
    assert grad.dtype == dtype and grad.shape == hidden.shape
    _assert_relative(out, plain, truth, torch.float32, "forward")  # fp32 outputs whatever the input
    _assert_relative(grad, plain_grad, truth_grad, dtype, "grad")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["edge", "many", "disjoint"])
def test_pool_spans(backend, dtype, kind):
    st, en = _spans(kind)
    fn = lambda h: pool_spans(h, st, en, backend=backend)  # noqa: E731
    _check(fn, lambda h: pool_spans_reference(h, st, en), dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["edge", "many"])
def test_paired_cosine(backend, dtype, kind):
    st, en = _spans(kind)
    p = st.shape[0] // 2
    a, b = (st[:p], en[:p]), (st[p : 2 * p], en[p : 2 * p])
    _check(
        lambda h: paired_cosine(h, *a, *b, backend=backend),
        lambda h: paired_cosine_reference(h, *a, *b),
        dtype,
    )


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("same_hidden", [True, False], ids=["b_is_a", "b_separate"])
def test_cosine_matrix(backend, dtype, same_hidden):
    sa, ea = _spans("edge")
    sb, eb = _spans("many", n=29)
    other = _hidden(dtype, n=29, seed=7)
    if same_hidden:
        fn = lambda h: cosine_matrix(h, sa, ea, h, sb, eb, backend=backend)  # noqa: E731
        ref = lambda h: cosine_matrix_reference(h, sa, ea, h, sb, eb)  # noqa: E731
    else:
        fn = lambda h: cosine_matrix(h, sa, ea, other, sb, eb, backend=backend)  # noqa: E731
        ref = lambda h: cosine_matrix_reference(h, sa, ea, other.to(h.dtype), sb, eb)  # noqa: E731
    _check(fn, ref, dtype)


def _dense_pool(hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Independent of the reference's slicing loop: a [S, N] span-membership matrix of 1/len times hidden."""
    rows = torch.arange(hidden.shape[0])
    inside = (rows[None, :] >= starts[:, None]) & (rows[None, :] < ends[:, None])
    return (inside.to(hidden.dtype) / (ends - starts).to(hidden.dtype)[:, None]) @ hidden


def _dense_unit(hidden, starts, ends, eps=1e-8):
    u = _dense_pool(hidden, starts, ends)
    return u / (u * u).sum(dim=1, keepdim=True).sqrt().clamp(min=eps)


def _oracle_cases() -> dict[str, tuple]:
    """name -> (reference function, dense function) of hidden: every public function and span layout."""
    st, en = _spans("edge")
    ms, me = _spans("many")
    sb, eb = _spans("many", n=29)
    other = _hidden(torch.float64, n=29, seed=7)
    p = st.shape[0] // 2
    return {
        "pool-edge": (lambda h: pool_spans_reference(h, st, en), lambda h: _dense_pool(h, st, en)),
        "pool-many": (lambda h: pool_spans_reference(h, ms, me), lambda h: _dense_pool(h, ms, me)),
        "paired-edge": (
            lambda h: paired_cosine_reference(h, st[:p], en[:p], st[p:], en[p:]),
            lambda h: (_dense_unit(h, st[:p], en[:p]) * _dense_unit(h, st[p:], en[p:])).sum(dim=1),
        ),
        "paired-many": (
            lambda h: paired_cosine_reference(h, ms[:32], me[:32], ms[32:], me[32:]),
            lambda h: (_dense_unit(h, ms[:32], me[:32]) * _dense_unit(h, ms[32:], me[32:])).sum(dim=1),
        ),
        "matrix-b_is_a": (
            lambda h: cosine_matrix_reference(h, st, en, h, sb, eb),
            lambda h: _dense_unit(h, st, en) @ _dense_unit(h, sb, eb).T,
        ),
        "matrix-b_separate": (
            lambda h: cosine_matrix_reference(h, st, en, other, sb, eb),
            lambda h: _dense_unit(h, st, en) @ _dense_unit(other, sb, eb).T,
        ),
    }


@pytest.mark.parametrize("case", list(_oracle_cases()))
def test_reference_matches_dense_oracle(case):
    """The fp64 oracle of every other test is itself right: the reference (a loop of slices and
    F.normalize) equals dense span-membership products with an explicit norm, forward and gradient."""
    reference, dense = _oracle_cases()[case]
    hidden = _hidden(torch.float64)
    out, grad = _run(reference, hidden)
    want, want_grad = _run(dense, hidden)
    assert out.dtype == torch.float64 and grad.abs().max() > 0
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_cosine_matrix_grad_into_both_hiddens():
    """With two distinct hiddens, both receive gradients (triton path vs reference, fp32)."""
    sa, ea = _spans("edge")
    sb, eb = _spans("disjoint")
    grads = {}
    for backend in ("triton", "reference"):
        ha = _hidden(torch.float32, seed=1).requires_grad_()
        hb = _hidden(torch.float32, seed=2).requires_grad_()
        cosine_matrix(ha, sa, ea, hb, sb, eb, backend=backend).sum().backward()
        grads[backend] = (ha.grad, hb.grad)
    for g, r in zip(grads["triton"], grads["reference"], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fp16_input(backend):
    st, en = _spans("edge")
    _check(
        lambda h: pool_spans(h, st, en, backend=backend),
        lambda h: pool_spans_reference(h, st, en),
        torch.float16,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_answers(backend):
    """Identical pooled vectors give cos 1, opposite ones -1; a zero mean gives 0 (eps guard), no NaN."""
    v = torch.randn(1, H)
    hidden = torch.cat([v, v, -v, v, 3 * v, -v, v]).requires_grad_()
    # spans: [0,2) = v, [2,3) = -v, [3,5) = 2v (same direction), [5,7) = 0
    st, en = torch.tensor([0, 0, 3, 5]), torch.tensor([2, 2, 5, 7])
    sb, eb = torch.tensor([3, 2, 0]), torch.tensor([5, 3, 2])
    cos = paired_cosine(hidden, st[:3], en[:3], sb, eb, backend=backend)
    torch.testing.assert_close(cos, torch.tensor([1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    sb, eb = torch.tensor([2, 0]), torch.tensor([3, 1])
    m = cosine_matrix(hidden, st, en, hidden, sb, eb, backend=backend)
    want = torch.tensor([[-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(m, want, atol=1e-5, rtol=0)
    m.sum().backward()
    assert torch.isfinite(hidden.grad).all()


def test_zero_mean_span_grad_matches_reference():
    """Below eps the normalisation divides by eps: the Triton backward must match F.normalize's."""
    v = torch.randn(1, H)
    hidden = torch.cat([v, -v, v, torch.randn(2, H)])
    st, en = torch.tensor([0, 2]), torch.tensor([2, 5])
    out = {}
    for backend in ("triton", "reference"):
        leaf = hidden.clone().requires_grad_()
        cosine_matrix(leaf, st, en, leaf, st, en, eps=1e-3, backend=backend).sum().backward()
        out[backend] = leaf.grad
    torch.testing.assert_close(out["triton"], out["reference"], rtol=1e-4, atol=1e-5)


def test_no_grad_and_empty():
    hidden = _hidden(torch.float32)
    st, en = _spans("edge")
    with torch.no_grad():
        for backend in BACKENDS:
            assert not pool_spans(hidden.requires_grad_(), st, en, backend=backend).requires_grad
    empty = torch.zeros(0, dtype=torch.long)
    for backend in BACKENDS:
        assert pool_spans(hidden, empty, empty, backend=backend).shape == (0, H)


def test_default_backend_on_cpu_is_torch(monkeypatch):
    monkeypatch.delenv("CLMAP_KERNEL_BACKEND", raising=False)
    hidden = _hidden(torch.float32)
    st, en = _spans("edge")
    torch.testing.assert_close(pool_spans(hidden, st, en), pool_spans_reference(hidden, st, en))


def _bad_inputs():
    ok_s, ok_e = torch.tensor([0, 3]), torch.tensor([3, 5])
    return [
        ("start >= end", ok_s, torch.tensor([3, 3]), "empty or reversed"),
        ("reversed", torch.tensor([4]), torch.tensor([2]), "empty or reversed"),
        ("negative start", torch.tensor([-1]), torch.tensor([2]), "out of range"),
        ("end past N", torch.tensor([40]), torch.tensor([N + 1]), "out of range"),
        ("length mismatch", ok_s, torch.tensor([3]), "differ in length"),
        ("float indices", ok_s.float(), ok_e, "int64"),
        ("2-D indices", ok_s[None], ok_e[None], "1-D"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_spans_raise(backend, case):
    _, st, en, msg = case
    hidden = _hidden(torch.float32)
    with pytest.raises(ValueError, match=msg):
        pool_spans(hidden, st, en, backend=backend)
    with pytest.raises(ValueError, match=msg):
        paired_cosine(hidden, st, en, st, en, backend=backend)
    with pytest.raises(ValueError, match=msg):
        cosine_matrix(hidden, st, en, hidden, st, en, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes_raise(backend):
    hidden = _hidden(torch.float32)
    s2, e2 = torch.tensor([0, 3]), torch.tensor([3, 5])
    s1, e1 = torch.tensor([0]), torch.tensor([3])
    with pytest.raises(ValueError, match="as many a-spans"):
        paired_cosine(hidden, s2, e2, s1, e1, backend=backend)
    with pytest.raises(ValueError, match="hidden sizes differ"):
        cosine_matrix(hidden, s2, e2, torch.randn(9, H + 1), s1, e1, backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        pool_spans(hidden[0], s1, e1, backend=backend)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        pool_spans(hidden, s1, e1, backend="cuda-magic")


# ----------------------------------------------------------------------------------------------------
# The fused Triton path: paired-cosine Function, event-sorted backward, launch counts
# ----------------------------------------------------------------------------------------------------


def _small_blocks(monkeypatch):
    """Force every Triton launcher onto several blocks: split forward (partials + finishing kernel), a
    multi-tile, multi-H-block event scan and a row kernel looping over several column steps."""
    monkeypatch.setattr(fwd, "choose_block_h", lambda *args: 8)
    monkeypatch.setattr(bwd, "choose_loop_block_h", lambda *args: 8)
    monkeypatch.setattr(bwd, "choose_scan_blocks", lambda *args: (4, 8))
    monkeypatch.setattr(bwd, "choose_rows_blocks", lambda *args: (4, 8, 16))


def _span_cases() -> dict[str, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """name -> ((a_starts, a_ends), (b_starts, b_ends)): overlapping, nested, length-1, shared bounds."""
    g = torch.Generator().manual_seed(3)
    one = torch.randint(0, N, (12,), generator=g)  # length-1 spans, with repeats
    st, en = _spans("edge")
    ms, me = _spans("many", seed=5)
    return {
        "edge": ((st[:4], en[:4]), (st[4:], en[4:])),
        "length1": ((one[:6], one[:6] + 1), (one[6:], one[6:] + 1)),
        "a_is_b": ((ms[:9], me[:9]), (ms[:9], me[:9])),
        "nested": (
            (torch.tensor([0, 2, 2, 40]), torch.tensor([N, 9, 3, 41])),
            (torch.tensor([1, 2, 8, 0]), torch.tensor([N, 30, 9, 1])),
        ),
        "many": ((ms[:32], me[:32]), (ms[32:], me[32:])),
    }


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(_span_cases()))
def test_paired_fused_function(monkeypatch, case, dtype, split):
    """_PairedCosine (forward and the event-sorted backward) against the fp64 oracle."""
    if split:
        _small_blocks(monkeypatch)
    a, b = _span_cases()[case]
    _check(
        lambda h: paired_cosine(h, *a, *b, backend="triton"),
        lambda h: paired_cosine_reference(h, *a, *b),
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_and_matrix_split_blocks(monkeypatch, dtype):
    """pool_spans and cosine_matrix (both span lists in one Function) with every kernel split."""
    _small_blocks(monkeypatch)
    st, en = _spans("many")
    _check(
        lambda h: pool_spans(h, st, en, backend="triton"), lambda h: pool_spans_reference(h, st, en), dtype
    )
    sa, ea = _spans("edge")
    _check(
        lambda h: cosine_matrix(h, sa, ea, h, st[:20], en[:20], backend="triton"),
        lambda h: cosine_matrix_reference(h, sa, ea, h, st[:20], en[:20]),
        dtype,
    )


def _grad(fn, hidden, seed=1):
    return _run(fn, hidden, seed)[1]


@pytest.mark.parametrize("fn", ["paired", "pool", "matrix"])
def test_torch_sort_fallback_matches_kernel_ranking(monkeypatch, fn):
    """Many spans rank their events with torch.sort instead of in the forward kernel: same bits."""
    st, en = _spans("many")
    calls = {
        "paired": lambda h: paired_cosine(h, st[:32], en[:32], st[32:], en[32:], backend="triton"),
        "pool": lambda h: pool_spans(h, st, en, backend="triton"),
        "matrix": lambda h: cosine_matrix(h, st[:10], en[:10], h, st[10:], en[10:], backend="triton"),
    }
    hidden = _hidden(torch.float32)
    in_kernel = _grad(calls[fn], hidden)
    monkeypatch.setattr(fwd, "MAX_KERNEL_RANK_EVENTS", 0)
    sorted_by_torch = _grad(calls[fn], hidden)
    assert torch.equal(in_kernel, sorted_by_torch)
    assert torch.equal(in_kernel, _grad(calls[fn], hidden)), "backward is not deterministic"


def test_kernel_ranking_is_a_stable_sort():
    """The forward kernels' counting sort of the span events equals torch.sort(stable=True)."""
    g = torch.Generator().manual_seed(11)
    starts = torch.randint(0, 10, (40,), generator=g)  # many ties, starts equal to other ends
    ends = starts + torch.randint(1, 4, (40,), generator=g)
    hidden = _hidden(torch.float32, n=20)
    one_list = make_spans(starts, ends)
    two_lists = make_spans(starts[:13], ends[:13], starts[13:], ends[13:])
    pairs = make_spans(starts[:20], ends[:20], starts[20:], ends[20:])
    cases = ((fwd.pool_forward, one_list), (fwd.pool_forward, two_lists), (fwd.paired_forward, pairs))
    for forward, spans in cases:
        sorted_pos, sorted_ev = forward(hidden, spans, 1e-8, rank=True)[3]
        want_pos, want_ev = torch.sort(torch.cat([starts, ends]), stable=True)
        assert torch.equal(sorted_pos, want_pos)
        assert torch.equal(sorted_ev.long(), want_ev)


def test_mixed_index_dtypes_and_views():
    """int32 a-spans with int64 b-spans, strided index views, row-strided hidden: same as the reference."""
    st, en = _spans("many")
    a = (st[:64:2].int(), en[:64:2].int())
    b = (st[1:64:2], en[1:64:2])
    _check(
        lambda h: paired_cosine(torch.cat([h, h], 1)[:, : h.shape[1]], *a, *b, backend="triton"),
        lambda h: paired_cosine_reference(h, *a, *b),
        torch.float32,
    )
    _check(
        lambda h: cosine_matrix(torch.cat([h, h], 1)[:, : h.shape[1]], *a, h, *b, backend="triton"),
        lambda h: cosine_matrix_reference(h, *a, h, *b),
        torch.bfloat16,
    )


def test_paired_zero_mean_span_grad_matches_reference():
    """Below eps the paired backward drops the projection term, like F.normalize's backward."""
    v = torch.randn(1, H)
    hidden = torch.cat([v, -v, v, torch.randn(2, H)])
    a, b = (torch.tensor([0, 2]), torch.tensor([2, 5])), (torch.tensor([2, 0]), torch.tensor([5, 2]))
    out = {}
    for backend in ("triton", "reference"):
        leaf = hidden.clone().requires_grad_()
        paired_cosine(leaf, *a, *b, eps=1e-3, backend=backend).sum().backward()
        out[backend] = leaf.grad
    assert out["reference"][:2].abs().max() > 0  # the eps branch does carry a gradient
    torch.testing.assert_close(out["triton"], out["reference"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_span_lists(dtype):
    """No pairs / no spans: empty outputs, and a zero gradient of hidden's dtype and shape."""
    empty = torch.zeros(0, dtype=torch.long)
    st, en = _spans("edge")
    calls = [
        lambda h: paired_cosine(h, empty, empty, empty, empty, backend="triton"),
        lambda h: pool_spans(h, empty, empty, backend="triton"),
        lambda h: cosine_matrix(h, empty, empty, h, st, en, backend="triton"),
        lambda h: cosine_matrix(h, st, en, h, empty, empty, backend="triton"),
    ]
    for fn in calls:
        leaf = _hidden(dtype).requires_grad_()
        out = fn(leaf)
        assert out.numel() == 0 and out.dtype == torch.float32
        (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
        assert grad is None or (grad.dtype == dtype and grad.shape == leaf.shape and not grad.any())


def test_paired_no_grad_forward_matches():
    """Under no_grad (evaluation) the Function skips the event ranking: same cosines, no graph."""
    st, en = _spans("many")
    hidden = _hidden(torch.float32).requires_grad_()
    with torch.no_grad():
        cos = paired_cosine(hidden, st[:32], en[:32], st[32:], en[32:], backend="triton")
    assert cos.grad_fn is None
    want = paired_cosine(hidden, st[:32], en[:32], st[32:], en[32:], backend="triton")
    torch.testing.assert_close(cos, want.detach(), rtol=0, atol=0)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """aten ops called outside the Triton kernels (the interpreter's own tensor work is not counted)."""

    def __init__(self):
        super().__init__()
        self.ops, self.paused = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _count_launches(monkeypatch, mode: _CountOps) -> list[str]:
    launches = []
    for module in (fwd, bwd):
        for name in dir(module):
            kernel = getattr(module, name)
            if name.endswith("_kernel") and hasattr(kernel, "run"):

                class Counted:
                    def __init__(self, kernel=kernel, name=name):
                        self.kernel, self.name = kernel, name

                    def __getitem__(self, grid):
                        def launch(*args, **kwargs):
                            launches.append(self.name)
                            mode.paused = True
                            try:
                                return self.kernel[grid](*args, **kwargs)
                            finally:
                                mode.paused = False

                        return launch

                monkeypatch.setattr(module, name, Counted())
    return launches


# Ops that allocate or make views: no kernel, no sync (torch.empty is not a zero-fill).
_CHEAP_OPS = {"empty", "empty_like", "detach", "slice", "alias"}


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_paired_launch_and_op_counts(monkeypatch, split):
    """paired_cosine fwd+bwd on the Triton path: 1 (+1 when H is split) forward launch, 2 backward
    launches, and no other compute op (no casts, cats, zero-fills, sorts or syncs)."""
    if split:
        monkeypatch.setattr(fwd, "choose_block_h", lambda *args: 8)
    st, en = _spans("many")
    a, b = (st[:32], en[:32]), (st[32:], en[32:])
    leaf = _hidden(torch.bfloat16).requires_grad_()
    upstream = torch.randn(32)
    mode = _CountOps()
    launches = _count_launches(monkeypatch, mode)
    with mode:
        cos = paired_cosine(leaf, *a, *b, backend="triton", validate=False)
        (grad,) = torch.autograd.grad(cos, leaf, upstream)
    want_fwd = ["_paired_fwd_kernel"] + (["_paired_finalize_kernel"] if split else [])
    assert launches == want_fwd + ["_events_scan_kernel", "_rows_kernel"]
    assert set(mode.ops) <= _CHEAP_OPS, mode.ops
    assert grad.dtype == torch.bfloat16 and grad.any()


def test_pool_and_matrix_launch_counts(monkeypatch):
    """pool_spans / cosine_matrix fwd+bwd: 1 forward launch, 3 backward launches, no extra compute op."""
    st, en = _spans("many")
    leaf = _hidden(torch.float32).requires_grad_()
    mode = _CountOps()
    launches = _count_launches(monkeypatch, mode)
    backward = ["_span_grad_kernel", "_events_scan_kernel", "_rows_kernel"]
    upstream = [torch.randn(n, H) for n in (st.shape[0], 10, st.shape[0] - 10)]
    with mode:
        pooled = pool_spans(leaf, st, en, backend="triton", validate=False)
        torch.autograd.grad(pooled, leaf, upstream[0])
    assert launches == ["_pool_fwd_kernel"] + backward and set(mode.ops) <= _CHEAP_OPS, mode.ops
    launches.clear()
    with mode:  # cosine_matrix's Function: both span lists, the unit vectors of each as outputs
        _, u, v = ps._pool_normalize(leaf, st[:10], en[:10], 1e-8, "triton", st[10:], en[10:])
        torch.autograd.grad([u, v], leaf, upstream[1:])
    assert launches == ["_pool_fwd_kernel"] + backward and set(mode.ops) <= _CHEAP_OPS, mode.ops
