"""Fused mapping loss: Triton (interpreted on CPU) and chunked torch paths against an fp64 reference.

Accuracy rule (FlashAttention / Cut Cross-Entropy): a path's error against the fp64 reference may
not exceed the error of plain PyTorch at the same input dtype by more than a small tolerance.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ml = importlib.import_module("clmap.kernels.mapping_loss")
mapping_loss, mapping_loss_reference = ml.mapping_loss, ml.mapping_loss_reference

BACKENDS = ["torch", "triton"]
SLACK = {torch.float32: 1e-5, torch.bfloat16: 2e-3, torch.float16: 1e-3}


def _inputs(n, h, v, g, *, dtype=torch.float32, ignore=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5 * 2).to(dtype)
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < ignore] = -100
    groups = torch.randint(0, g, (n,), generator=gen)
    upstream = torch.rand(g, generator=gen) * 2 + 0.25  # non-uniform gradient on loss_sum
    return hidden, weight, targets, groups, upstream


def _run(fn, hidden, weight, targets, groups, g, upstream, weighted=False, **kw):
    """Loss sums, counts and the gradients of ``sum_g upstream_g * loss_sum_g``: backpropagated through
    ``loss_sum`` (deferred backward) or, ``weighted``, passed as ``group_weights`` (gradients in forward)."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    if weighted:
        out = fn(hidden, weight, targets, groups, g, group_weights=upstream, **kw)
        assert not out.loss_sum.requires_grad
        total = out.weighted_loss
    else:
        out = fn(hidden, weight, targets, groups, g, **kw)
        total = (out.loss_sum * upstream.to(out.loss_sum.dtype)).sum()
    gh, gw = torch.autograd.grad(total, [hidden, weight])
    return out.loss_sum.detach(), out.count, gh, gw


def _plain(hidden, weight, targets, groups, g, *, z_loss=0.0):
    """Plain PyTorch at the input dtype: full logits + F.cross_entropy; the error baseline."""
    logits = hidden @ weight.t()
    per_token = F.cross_entropy(logits, targets, reduction="none")
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        per_token = per_token + z_loss * lse * lse * (targets != -100)
    loss_sum = torch.zeros(g, dtype=torch.float32).index_add(0, groups, per_token.float())
    return ml.GroupedLoss(loss_sum, torch.bincount(groups[targets != -100], minlength=g))


def _err(a, ref):
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


def _check_against_reference(
    backend,
    hidden,
    weight,
    targets,
    groups,
    g,
    upstream,
    z_loss=0.0,
    *,
    weighted=False,
    chunk_bytes=None,
    accum_dtype=torch.float32,
):
    dtype = hidden.dtype
    ref = _run(
        mapping_loss_reference, hidden.double(), weight.double(), targets, groups, g, upstream, z_loss=z_loss
    )
    plain = _run(_plain, hidden, weight, targets, groups, g, upstream, z_loss=z_loss)
    got = _run(
        mapping_loss,
        hidden,
        weight,
        targets,
        groups,
        g,
        upstream,
        weighted,
        z_loss=z_loss,
        backend=backend,
        chunk_bytes=chunk_bytes,
        accum_dtype=accum_dtype,
    )
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    assert got[2].dtype == dtype and got[3].dtype == dtype
    assert torch.equal(got[1], ref[1])
    pick = (0, 2, 3)  # loss_sum, grad_hidden, grad_weight
    for i in pick:
        a, p, r = got[i], plain[i], ref[i]
        tol = SLACK[dtype] * max(1.0, r.abs().max().item())
        assert _err(a, r) <= _err(p, r) + tol, f"output {i}: {_err(a, r):.3e} vs {_err(p, r):.3e} + {tol:.1e}"
    return got


@pytest.mark.parametrize("weighted", [False, True], ids=["deferred", "weighted"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n,h,v,g,dtype,ignore,z_loss",
    [
        (47, 31, 123, 3, torch.float32, 0.5, 0.0),
        (47, 31, 123, 3, torch.float32, 0.9, 1e-3),
        (47, 31, 123, 3, torch.bfloat16, 0.3, 1e-4),
        (40, 24, 77, 2, torch.float16, 0.5, 0.0),
        (8, 16, 32771, 2, torch.float32, 0.3, 0.0),
        (1, 31, 123, 1, torch.float32, 0.0, 0.0),
    ],
    ids=["base", "zloss-90pct-ignored", "bf16", "fp16", "large-vocab", "single-token"],
)
def test_matches_reference(backend, weighted, n, h, v, g, dtype, ignore, z_loss):
    hidden, weight, targets, groups, upstream = _inputs(n, h, v, g, dtype=dtype, ignore=ignore)
    _check_against_reference(
        backend, hidden, weight, targets, groups, g, upstream, z_loss=z_loss, weighted=weighted
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_group_and_group_sums(backend):
    hidden, weight, targets, groups, upstream = _inputs(47, 31, 123, 3)
    groups[groups == 2] = 3  # group 2 of 5 is empty, group 4 too
    loss_sum, count, _, _ = _check_against_reference(
        backend, hidden, weight, targets, groups, 5, torch.rand(5) + 0.5
    )
    assert count[2] == 0 and count[4] == 0 and loss_sum[2] == 0 and loss_sum[4] == 0
    for k in range(5):
        alone = torch.where(groups == k, targets, torch.full_like(targets, -100))
        part = mapping_loss_reference(hidden.double(), weight.double(), alone)
        torch.testing.assert_close(loss_sum[k].double(), part.loss_sum[0], rtol=1e-5, atol=1e-5)
        assert count[k] == part.count[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored(backend):
    hidden, weight, targets, groups, upstream = _inputs(20, 31, 123, 2, ignore=1.0)
    loss_sum, count, gh, gw = _run(
        mapping_loss, hidden, weight, targets, groups, 2, upstream, backend=backend, z_loss=1e-3
    )
    assert torch.equal(count, torch.zeros(2, dtype=torch.long))
    assert torch.equal(loss_sum, torch.zeros(2))
    assert not gh.any() and not gw.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_weight_gradients_add(backend):
    torch.manual_seed(0)
    v, h, n = 123, 32, 37
    emb = torch.nn.Embedding(v, h)
    ids = torch.randint(0, v, (n,))
    targets = torch.roll(ids, -1)
    targets[::3] = -100
    grads = {}
    for b in (backend, "reference"):
        emb.zero_grad()
        hidden = torch.tanh(emb(ids) * 3)  # the embedding matrix feeds the input and the lm_head
        out = mapping_loss(hidden, emb.weight, targets, backend=b)
        (out.loss_sum / out.count.clamp(min=1)).sum().backward()
        grads[b] = emb.weight.grad.clone()
    torch.testing.assert_close(grads[backend], grads["reference"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weighted", [False, True], ids=["deferred", "weighted"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_edges(backend, weighted, dtype):
    """7 tokens per chunk at V=123: chunk edges cut groups and ignored runs but change no output."""
    hidden, weight, targets, groups, upstream = _inputs(47, 31, 123, 3, dtype=dtype, ignore=0.3, seed=5)
    _check_against_reference(
        backend,
        hidden,
        weight,
        targets,
        groups,
        3,
        upstream,
        z_loss=1e-3,
        weighted=weighted,
        chunk_bytes=4 * 123 * 7,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_weighted_mode_contract(backend):
    """``weighted`` = sum_g w_g loss_sum_g; its upstream gradient scales the precomputed gradients; a frozen
    weight gets none; under no_grad the weighted sum is still returned."""
    hidden, weight, targets, groups, upstream = _inputs(30, 16, 50, 3, ignore=0.0)
    h = hidden.clone().requires_grad_()
    out = mapping_loss(h, weight, targets, groups, 3, group_weights=upstream, backend=backend)
    torch.testing.assert_close(out.weighted_loss, (upstream * out.loss_sum).sum())
    (grad_once,) = torch.autograd.grad(out.weighted_loss, [h], retain_graph=True)
    (grad_thrice,) = torch.autograd.grad(3.0 * out.weighted_loss, [h])
    torch.testing.assert_close(grad_thrice, 3.0 * grad_once)
    ref_h = hidden.clone().requires_grad_()
    ref = mapping_loss_reference(ref_h, weight, targets, groups, 3)
    (ref_grad,) = torch.autograd.grad((upstream * ref.loss_sum).sum(), [ref_h])
    torch.testing.assert_close(grad_once, ref_grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        plain = mapping_loss(h, weight, targets, groups, 3, group_weights=upstream, backend=backend)
    torch.testing.assert_close(plain.weighted_loss, out.weighted_loss)
    with pytest.raises(ValueError, match="group_weights"):
        mapping_loss(h, weight, targets, groups, 3, group_weights=upstream[:2], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_bad_target_or_group(backend):
    hidden, weight, targets, groups, _ = _inputs(10, 16, 50, 2, ignore=0.0)
    targets[4] = 50
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        mapping_loss(hidden, weight, targets, groups, 2, backend=backend)
    if backend != "reference":
        with pytest.raises(ValueError, match="token 4: target 50"):
            mapping_loss(hidden, weight, targets, groups, 2, backend=backend)
        targets[4], groups[7] = 3, 2
        with pytest.raises(ValueError, match="token 7"):
            mapping_loss(hidden, weight, targets, groups, 2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ignore", [0.0, 0.5])
def test_tokens_kept_on_the_host_give_the_same_loss(backend, ignore):
    """The trainer's path: ``kept_tokens`` on the host (prefetch thread) instead of the device's nonzero /
    range check / bincount; same sums, counts and gradients, and a bad target is still named."""
    from clmap.kernels.mapping_loss_chunks import kept_tokens

    hidden, weight, targets, groups, upstream = _inputs(37, 16, 50, 3, ignore=ignore)
    kept = kept_tokens(targets, groups, 3, -100)
    assert (kept.index is None) == (ignore == 0.0)
    for weighted in (False, True):
        want = _run(mapping_loss, hidden, weight, targets, groups, 3, upstream, weighted, backend=backend)
        got = _run(
            mapping_loss, hidden, weight, targets, groups, 3, upstream, weighted, backend=backend, kept=kept
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    i = int((targets != -100).nonzero()[-1])
    targets[i] = 50
    with pytest.raises(ValueError, match=f"token {i}: target 50 must be in \\[0, 50\\)"):
        mapping_loss(
            hidden, weight, targets, groups, 3, backend=backend, kept=kept_tokens(targets, groups, 3, -100)
        )
    targets[i], groups[i] = 3, 3
    with pytest.raises(ValueError, match=f"token {i}: .* group 3 in \\[0, 3\\)"):
        kept_tokens(targets, groups, 3, -100)


def test_default_dispatch_on_cpu(monkeypatch):
    monkeypatch.delenv("CLMAP_KERNEL_BACKEND", raising=False)
    hidden, weight, targets, groups, _ = _inputs(10, 16, 50, 2)
    out = mapping_loss(hidden, weight, targets, groups, 2)
    ref = mapping_loss_reference(hidden, weight, targets, groups, 2)
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.count, ref.count)


@pytest.mark.parametrize("weighted", [False, True], ids=["deferred", "weighted"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "n,h,v,ignore,z_loss,chunk_rows",
    [(47, 31, 123, 0.3, 1e-4, None), (47, 31, 123, 0.3, 1e-3, 16), (8, 16, 32771, 0.3, 0.0, None)],
    ids=["one-chunk", "three-chunks", "large-vocab"],
)
def test_low_precision_accumulation(backend, weighted, dtype, n, h, v, ignore, z_loss, chunk_rows):
    """``accum_dtype`` = the inputs' dtype (logits chunks and weight-gradient accumulator in bf16/fp16):
    the same rule against the fp64 reference. Each chunk rounds the accumulator once, so its error grows
    with the number of chunks; at a few chunks it stays within plain PyTorch's own error + slack."""
    hidden, weight, targets, groups, upstream = _inputs(n, h, v, 3, dtype=dtype, ignore=ignore, seed=2)
    _check_against_reference(
        backend,
        hidden,
        weight,
        targets,
        groups,
        3,
        upstream,
        z_loss=z_loss,
        weighted=weighted,
        chunk_bytes=None if chunk_rows is None else 2 * v * chunk_rows,
        accum_dtype=dtype,
    )


def _buffer_dtypes(monkeypatch, accum, backend, weighted, v=50, chunk_rows=8):
    """(dtypes of the logits chunks, dtypes of the weight-gradient accumulators) of one fwd+bwd."""
    chunks = importlib.import_module("clmap.kernels.mapping_loss_chunks")
    hidden, weight, targets, groups, upstream = _inputs(40, 16, v, 3, dtype=torch.bfloat16, ignore=0.0)
    real_mm, real_pass = chunks._mm, ml.chunk_pass
    logits, grad_weights = [], []

    def spy_mm(a, b, out_dtype):
        out = real_mm(a, b, out_dtype)
        if out.shape[1] == v:
            logits.append(out.dtype)
        return out

    def spy_pass(*args, **kw):
        out = real_pass(*args, **kw)
        if out[3] is not None:
            grad_weights.append(out[3].dtype)
        return out

    monkeypatch.setattr(chunks, "_mm", spy_mm)
    monkeypatch.setattr(ml, "chunk_pass", spy_pass)
    chunk_bytes = accum.itemsize * v * chunk_rows
    kw = dict(backend=backend, chunk_bytes=chunk_bytes, accum_dtype=accum)
    _run(mapping_loss, hidden, weight, targets, groups, 3, upstream, weighted, **kw)
    monkeypatch.undo()
    return logits, grad_weights


@pytest.mark.parametrize("weighted", [False, True], ids=["deferred", "weighted"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_accumulation_holds_bf16(monkeypatch, backend, weighted):
    """The memory claim: with bf16 accumulation every logits chunk and the weight-gradient accumulator are
    bf16 (no fp32 V x H buffer); the fp32 default keeps both in fp32."""
    walks = 1 if weighted else 2  # the deferred mode walks the 5 chunks again in backward
    for accum in (torch.bfloat16, torch.float32):
        logits, grad_weights = _buffer_dtypes(monkeypatch, accum, backend, weighted)
        assert logits == [accum] * 5 * walks and grad_weights == [accum]


def test_low_precision_accumulation_contract():
    """accum_dtype must be fp32 or the inputs' dtype; in the weighted mode the upstream gradient scales the
    bf16 weight gradient (in place), and a second backward is refused instead of returning a wrong one."""
    hidden, weight, targets, groups, upstream = _inputs(20, 16, 50, 3, ignore=0.0)
    with pytest.raises(ValueError, match="accum_dtype=torch.bfloat16 must be torch.float32 or the dtype"):
        mapping_loss(hidden, weight, targets, groups, 3, accum_dtype=torch.bfloat16)
    w = weight.to(torch.bfloat16).requires_grad_()

    def weighted_loss():
        return mapping_loss(
            hidden.bfloat16(), w, targets, groups, 3, group_weights=upstream, accum_dtype=torch.bfloat16
        ).weighted_loss

    (grad_once,) = torch.autograd.grad(weighted_loss(), [w])
    loss = weighted_loss()
    (grad_thrice,) = torch.autograd.grad(3.0 * loss, [w], retain_graph=True)
    torch.testing.assert_close(grad_thrice.float(), 3.0 * grad_once.float(), rtol=2**-7, atol=0)
    with pytest.raises(RuntimeError, match="backpropagate through weighted_loss once"):
        torch.autograd.grad(loss, [w])
