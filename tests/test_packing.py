"""Packed sequences never attend to each other, on every attention implementation, at any micro-batch size.

Each packed sequence must give the logits and per-token losses it gives when run alone. flash-attn does not
run on a CPU: its path runs here through transformers' own flash-attention code with the flash-attn
functions replaced by plain-torch ones that record what they receive (``fake_flash``); torch's own varlen
flash attention (``varlen_attn``, CUDA only) is replaced the same way, behind clmap's attention function.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LANGS, PAIRS
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    masking_utils,
)
from transformers import modeling_flash_attention_utils as fa_utils

import clmap.model as clmap_model
from clmap.config import ObjectiveConfig
from clmap.data.examples import IGNORE_INDEX, GroupTable
from clmap.data.stream import Row, TrainingStream, build_sources, collate, source_weights
from clmap.data.tokenizer import load_tokenizer
from clmap.model import PackingError, check_packed_attention, packed_attention_inputs
from clmap.objectives import MappingObjective

VOCAB, SEQ = 61, 40
BACKENDS = ["sdpa", "eager", "flash_attention_2", "varlen_attn"]  # the last two: emulated kernels below
# Packed vs alone differ only by summation order: the error of plain PyTorch at the dtype (alone vs the fp32
# reference) plus this much, times max(1, |logit|max).
SLACK = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7}


# varlen_attn's keyword parameters by torch version (the device image has 2.11: window_size, no enable_gqa)
_VARLEN_BASE = frozenset(
    {"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "return_aux", "scale"}
)
TORCH_VARLEN_APIS = {
    "2.10": _VARLEN_BASE | {"is_causal"},
    "2.11": _VARLEN_BASE | {"window_size"},
    "2.12": _VARLEN_BASE | {"window_size", "enable_gqa"},
}


# -- flash-attn stand-in -------------------------------------------------------------------------------------
class FakeFlash:
    """flash_attn_func / flash_attn_varlen_func in plain torch, recording every call (CPU, any dtype)."""

    def __init__(self):
        self.varlen_calls: list[dict] = []
        self.torch_varlen_calls: list[dict] = []
        self.dense_calls = 0
        self.position_ids_inspections = {"per_forward": 0, "per_layer": 0}  # transformers finding boundaries

    @staticmethod
    def _attend(q, k, v, softmax_scale, causal, window_size):
        """q [L, Hq, D], k/v [L, Hkv, D] of one sequence."""
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        pos = torch.arange(q.shape[0])
        allowed = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool)
        if causal:
            allowed &= pos[:, None] >= pos[None, :]
        if window_size[0] >= 0:
            allowed &= pos[:, None] - pos[None, :] <= window_size[0]
        q, k, v = (x.transpose(0, 1) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=softmax_scale)
        return out.transpose(0, 1)

    def varlen(
        self,
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        window_size=(-1, -1),
        softcap=0.0,
        deterministic=False,
    ):
        self.varlen_calls.append(
            {
                "q_shape": tuple(q.shape),
                "cu_seqlens_q": cu_seqlens_q.clone(),
                "cu_seqlens_k": cu_seqlens_k.clone(),
                "max_seqlen_q": max_seqlen_q,
                "max_seqlen_k": max_seqlen_k,
                "causal": causal,
            }
        )
        bounds = cu_seqlens_q.tolist()
        parts = [
            self._attend(q[a:b], k[a:b], v[a:b], softmax_scale, causal, window_size)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return torch.cat(parts)

    def torch_varlen(
        self,
        query,
        key,
        value,
        cu_seq_q,
        cu_seq_k,
        max_q,
        max_k,
        *,
        return_aux=None,
        scale=None,
        window_size=(-1, -1),
        enable_gqa=False,
        is_causal=False,
    ):
        """``torch.nn.attention.varlen.varlen_attn``: window (-1, 0) is causal, (W, 0) causal over the W
        previous keys (torch 2.10: ``is_causal`` instead); K/V with fewer heads only with ``enable_gqa``, as
        the real one. :data:`TORCH_VARLEN_APIS` gives the parameters each torch version has."""
        if key.shape[1] != query.shape[1] and not enable_gqa:
            raise RuntimeError("varlen_attn: key/value heads differ from query heads without enable_gqa")
        if is_causal:
            assert window_size == (-1, -1), "torch 2.10 has no window_size"
            window_size = (-1, 0)
        self.torch_varlen_calls.append(
            {"q_shape": tuple(query.shape), "kv_heads": key.shape[1], "cu_seq_q": cu_seq_q.clone()}
            | {"cu_seq_k": cu_seq_k.clone(), "max_q": max_q, "max_k": max_k, "window_size": window_size}
        )
        assert window_size[1] == 0, window_size  # causal: never a key after the query
        bounds = cu_seq_q.tolist()
        parts = [
            self._attend(query[a:b], key[a:b], value[a:b], scale, True, (window_size[0], 0))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return torch.cat(parts)

    def dense(
        self,
        q,
        k,
        v,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        window_size=(-1, -1),
        softcap=0.0,
        deterministic=False,
    ):
        """[B, S, H, D]: each row one causal sequence (what flash_attn_func computes)."""
        self.dense_calls += 1
        return torch.stack(
            [self._attend(q[b], k[b], v[b], softmax_scale, causal, window_size) for b in range(q.shape[0])]
        )


@pytest.fixture
def fake_flash(monkeypatch):
    """transformers' flash_attention_2 code path, the flash-attn kernels swapped for :class:`FakeFlash`;
    clmap's varlen_attn implementation with torch's kernel swapped the same way."""
    fake = FakeFlash()
    monkeypatch.setattr(clmap_model, "VARLEN_KERNEL", fake.torch_varlen)
    monkeypatch.setattr(clmap_model, "VARLEN_PARAMS", TORCH_VARLEN_APIS["2.12"])

    def lazy_imports(implementation, attention_wrapper=None, allow_all_kernels=False):
        return fake.dense, fake.varlen, None, fa_utils._pad_input, fa_utils._unpad_input

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            fake.position_ids_inspections[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(fa_utils, "_lazy_imports", lazy_imports)
    monkeypatch.setattr(fa_utils, "_loaded_implementation", None)
    monkeypatch.setattr(fa_utils, "_is_packed_sequence", counted(fa_utils._is_packed_sequence, "per_layer"))
    monkeypatch.setattr(
        masking_utils,
        "find_packed_sequence_indices",
        counted(masking_utils.find_packed_sequence_indices, "per_forward"),
    )
    return fake


# -- models and rows -----------------------------------------------------------------------------------------
def tiny_model(
    impl: str, dtype: torch.dtype = torch.float32, cls=LlamaForCausalLM, config_cls=LlamaConfig, **cfg
):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
        **cfg,
    )
    model = cls(config).to(dtype).eval()
    # flash-attn cannot be loaded here: switch the implementation after construction (fake_flash serves it)
    model.config._attn_implementation = impl
    return model


def random_rows(micro_batch: int, seed: int, seq_len: int = SEQ) -> list[Row]:
    """Rows of several sequences of 3-14 tokens each; even rows are full, odd ones end in padding."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(micro_batch):
        lens, room = [], seq_len - (r % 2) * int(rng.integers(1, 6))  # odd rows keep a padding tail
        while room > 0:
            n = int(min(room, rng.integers(3, 15)))
            lens.append(n)
            room -= n
        ids = rng.integers(3, VOCAB, size=seq_len).tolist()
        positions = [p for n in lens for p in range(n)]
        targets = [ids[o + t + 1] if t + 1 < n else IGNORE_INDEX for o, n in _offsets(lens) for t in range(n)]
        pad = seq_len - sum(lens)
        rows.append(
            Row(
                input_ids=ids,
                targets=targets + [IGNORE_INDEX] * pad,
                position_ids=positions + list(range(pad)),
                groups=[0] * seq_len,
                spans=[],
                pairs=[],
                seq_lens=lens,
            )
        )
    return rows


def _offsets(lens: list[int]) -> list[tuple[int, int]]:
    return [(sum(lens[:i]), n) for i, n in enumerate(lens)]


def packed_logits(model, rows: list[Row], layout: str = "clmap") -> torch.Tensor:
    """[B·S, V] logits of the packed micro-batch.

    ``clmap``: the trainer's mechanism. The others leak on purpose (to show the comparison catches it):
    ``flat_no_boundaries`` one [1, B·S] row with plain positions and no boundaries; ``rows_positions_only``
    [B, S] rows with restarting position_ids and nothing else (what the trainer did before: transformers'
    flash-attention path ignores position_ids at batch size > 1).
    """
    batch = collate(rows)
    ids, positions = batch["input_ids"], batch["position_ids"]
    with torch.no_grad():
        if layout == "clmap":
            inputs = packed_attention_inputs(
                model.config._attn_implementation,
                model.get_input_embeddings()(ids),
                positions,
                batch["cu_seq_lens"],
                batch["max_seq_len"],
                model.config,
            )
            logits = model(**inputs, use_cache=False).logits
        elif layout == "flat_no_boundaries":
            logits = model(input_ids=ids.reshape(1, -1), use_cache=False).logits
        else:
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    return logits.reshape(ids.numel(), -1)


def alone_logits(model, rows: list[Row]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(flat offset, input ids, logits) of every sequence of the rows run on its own, unpadded."""
    out = []
    for r, row in enumerate(rows):
        for offset, n in _offsets(row.seq_lens):
            ids = torch.tensor(row.input_ids[offset : offset + n])[None]
            with torch.no_grad():
                out.append((r * len(row.input_ids) + offset, ids[0], model(input_ids=ids).logits[0]))
    return out


def leak(packed: torch.Tensor, alone: list, reference: list | None = None) -> tuple[float, float, float]:
    """Max abs difference of logits and of per-token losses, packed vs alone, and the largest |logit|.

    With ``reference`` (the same sequences alone in fp32), the packed error is measured against it instead.
    """
    logit_err = loss_err = scale = 0.0
    for i, (offset, ids, logits) in enumerate(alone):
        ref = logits if reference is None else reference[i][2]
        mine = packed[offset : offset + len(ids)]
        targets = torch.cat([ids[1:], torch.tensor([IGNORE_INDEX])])
        losses = [F.cross_entropy(x.float(), targets, reduction="none") for x in (mine, ref)]
        logit_err = max(logit_err, (mine.double() - ref.double()).abs().max().item())
        loss_err = max(loss_err, (losses[0] - losses[1]).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    return logit_err, loss_err, scale


# -- packed == alone -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("micro_batch", [1, 2, 4])
@pytest.mark.parametrize("impl", BACKENDS)
def test_packed_sequences_equal_each_sequence_alone(impl, micro_batch, fake_flash):
    model = tiny_model(impl)
    rows = random_rows(micro_batch, seed=micro_batch)
    assert sum(len(r.seq_lens) for r in rows) >= 2 * micro_batch  # several sequences per row
    packed = packed_logits(model, rows)
    # The boundaries came from the rows: transformers never looked for them in position_ids in a layer (a
    # device sync each); only flash_attention_2's mask preparation still does, once per forward.
    inspections = fake_flash.position_ids_inspections
    assert inspections == {"per_forward": int(impl == "flash_attention_2"), "per_layer": 0}, inspections
    if impl == "flash_attention_2":  # every layer ran varlen over the flattened micro-batch, nothing else
        assert len(fake_flash.varlen_calls) == model.config.num_hidden_layers and fake_flash.dense_calls == 0
    if impl == "varlen_attn":  # every layer ran torch's varlen kernel: causal, GQA in the kernel
        calls = fake_flash.torch_varlen_calls
        assert len(calls) == model.config.num_hidden_layers and not fake_flash.varlen_calls
        assert all(c["window_size"] == (-1, 0) and c["kv_heads"] == 2 for c in calls)
    logit_err, loss_err, scale = leak(packed, alone_logits(model, rows))
    tol = SLACK[torch.float32] * max(1.0, scale)
    assert logit_err <= tol and loss_err <= tol, (logit_err, loss_err, tol)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_sequences_equal_alone_in_bf16(impl):
    """bf16: packed may differ from alone only as much as bf16 differs from fp32 (plus one bf16 ulp)."""
    model = tiny_model(impl)
    rows = random_rows(4, seed=7)
    reference = alone_logits(model, rows)
    model = model.to(torch.bfloat16)
    packed = packed_logits(model, rows)
    plain = alone_logits(model, rows)
    plain_err = max(
        (a[2].double() - b[2].double()).abs().max().item() for a, b in zip(plain, reference, strict=True)
    )
    logit_err, _, scale = leak(packed, plain, reference)
    assert logit_err <= plain_err + SLACK[torch.bfloat16] * max(1.0, scale), (logit_err, plain_err)
    unmasked, _, _ = leak(packed_logits(model, rows, "flat_no_boundaries"), plain, reference)
    assert unmasked > plain_err + SLACK[torch.bfloat16] * max(1.0, scale)


@pytest.mark.parametrize("impl", ["flash_attention_2", "varlen_attn"])
def test_varlen_attention_receives_the_row_boundaries(impl, fake_flash):
    """What flash_attn_varlen_func / torch's varlen_attn get: int32 offsets of every sequence and padding
    tail over the flat micro-batch, the longest length as a Python int, causal, one [B·S, heads, dim]
    tensor."""
    model = tiny_model(impl)
    rows = random_rows(2, seed=3)
    packed_logits(model, rows)
    assert rows[0].num_tokens == SEQ and rows[1].num_tokens < SEQ  # one full row, one with a padding tail
    expected = np.cumsum([0, *(n for r in rows for n in r.segments())]).tolist()
    assert expected[-1] == 2 * SEQ
    names = ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")
    calls = fake_flash.varlen_calls
    if impl == "varlen_attn":
        names, calls = ("cu_seq_q", "cu_seq_k", "max_q", "max_k"), fake_flash.torch_varlen_calls
    assert len(calls) == model.config.num_hidden_layers
    for call in calls:
        for key in names[:2]:
            assert call[key].dtype == torch.int32 and call[key].tolist() == expected
        assert call[names[2]] == call[names[3]] == max(np.diff(expected))
        assert isinstance(call[names[2]], int)  # no device sync to read it
        assert call["q_shape"] == (2 * SEQ, 4, 8) and call.get("causal", call.get("window_size") == (-1, 0))


# -- the comparison can fail ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("impl", "layout"),
    [
        ("sdpa", "flat_no_boundaries"),
        ("eager", "flat_no_boundaries"),
        ("flash_attention_2", "flat_no_boundaries"),
        ("flash_attention_2", "rows_positions_only"),  # issue 11: FA2 at micro_batch > 1 without cu_seq_lens
        ("varlen_attn", "flat_no_boundaries"),
    ],
)
def test_an_unmasked_packed_forward_is_caught_leaking(impl, layout, fake_flash):
    model = tiny_model(impl)
    rows = random_rows(2, seed=11)
    packed = packed_logits(model, rows, layout)
    if impl == "flash_attention_2":  # transformers ran dense flash attention: one causal block per row
        assert fake_flash.dense_calls == model.config.num_hidden_layers and not fake_flash.varlen_calls
    logit_err, loss_err, scale = leak(packed, alone_logits(model, rows))
    tol = SLACK[torch.float32] * max(1.0, scale)
    assert logit_err > 100 * tol and loss_err > 100 * tol, (logit_err, loss_err)


# -- sliding windows -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", BACKENDS)
def test_sliding_window_model_packed_equals_alone(impl, fake_flash):
    """Mistral-style: every layer has a window shorter than the sequences; the mask must keep it."""
    model = tiny_model(impl, cls=MistralForCausalLM, config_cls=MistralConfig, sliding_window=5)
    rows = random_rows(2, seed=5)
    logit_err, loss_err, scale = leak(packed_logits(model, rows), alone_logits(model, rows))
    assert logit_err <= SLACK[torch.float32] * max(1.0, scale), logit_err


@pytest.mark.parametrize("torch_api", sorted(TORCH_VARLEN_APIS))
@pytest.mark.parametrize("window", [None, 5])
def test_varlen_attn_of_every_torch_version_packed_equals_alone(torch_api, window, fake_flash, monkeypatch):
    """varlen_attn's parameters changed across torch 2.10-2.12 (is_causal, then window_size, then
    enable_gqa): each is called with what it has (K/V repeated per head without enable_gqa), still exact; a
    sliding window that the kernel cannot take is refused by name, never dropped."""
    monkeypatch.setattr(clmap_model, "VARLEN_PARAMS", TORCH_VARLEN_APIS[torch_api])
    if window is None:
        model = tiny_model("varlen_attn")
    else:
        model = tiny_model(
            "varlen_attn", cls=MistralForCausalLM, config_cls=MistralConfig, sliding_window=window
        )
    rows = random_rows(2, seed=7)
    if window is not None and torch_api == "2.10":
        with pytest.raises(
            PackingError, match="no sliding windows in varlen_attn .*sliding_window=5; use sdpa"
        ):
            packed_logits(model, rows)
        return
    packed = packed_logits(model, rows)
    calls = fake_flash.torch_varlen_calls
    assert len(calls) == model.config.num_hidden_layers
    kv_heads = 2 if "enable_gqa" in TORCH_VARLEN_APIS[torch_api] else 4  # 4 query heads
    assert all(c["kv_heads"] == kv_heads for c in calls)
    assert all(c["window_size"] == ((-1, 0) if window is None else (window - 1, 0)) for c in calls)
    logit_err, loss_err, scale = leak(packed, alone_logits(model, rows))
    tol = SLACK[torch.float32] * max(1.0, scale)
    assert logit_err <= tol and loss_err <= tol, (logit_err, loss_err, tol)


# -- refusals ------------------------------------------------------------------------------------------------
def test_varlen_attn_refuses_a_padded_batch(fake_flash):
    """transformers hands varlen_attn no padding mask: a padded batch would attend its padding silently."""
    from clmap.model import refuse_padded_batches

    model = refuse_padded_batches(tiny_model("varlen_attn"))
    ids = torch.randint(3, VOCAB, (2, 6))
    model(input_ids=ids, attention_mask=torch.ones(2, 6, dtype=torch.long))  # nothing padded: fine
    with pytest.raises(
        PackingError, match="varlen_attn cannot take a padded batch .* load the model with sdpa"
    ):
        model(input_ids=ids, attention_mask=torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]]))
    refuse_padded_batches(sdpa := tiny_model("sdpa"))
    sdpa(input_ids=ids, attention_mask=torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]]))  # sdpa masks it itself


def test_unsupported_attention_is_refused_before_training():
    model = tiny_model("flex_attention")
    with pytest.raises(PackingError, match="model.attn_implementation: 'flex_attention'"):
        check_packed_attention(model)
    with pytest.raises(PackingError, match="flex_attention"):
        MappingObjective(model, GroupTable(["en"], []), ObjectiveConfig())


def test_flash_attention_needs_an_attention_that_takes_the_boundaries(monkeypatch):
    model = tiny_model("flash_attention_2")
    attention = model.model.layers[0].self_attn
    monkeypatch.setattr(
        attention, "forward", lambda hidden_states, position_embeddings, attention_mask=None: None
    )
    with pytest.raises(PackingError, match="attention of LlamaForCausalLM does not pass keyword arguments"):
        check_packed_attention(model)
    assert check_packed_attention(tiny_model("flash_attention_2")) == "flash_attention_2"


def tiny_gemma3(impl: str, window: int = 5):
    """Gemma 3 text in miniature: sliding-window and full-attention layers interleaved (the real 270M has
    window 512, five sliding layers per full one), scaled embeddings, tied head."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return tiny_model(
        impl,
        cls=Gemma3ForCausalLM,
        config_cls=Gemma3TextConfig,
        head_dim=8,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention"],
    )


@pytest.mark.parametrize("impl", BACKENDS)
def test_mixed_sliding_and_full_layers_packed_equal_alone(impl, fake_flash):
    """Sequences longer than the window, in a model mixing sliding and full layers (Gemma 3): under a mask
    each layer type gets its own packing mask, so every sequence gives exactly its logits alone."""
    model = tiny_gemma3(impl)
    assert check_packed_attention(model) == impl
    rows = random_rows(2, seed=5)
    assert max(n for r in rows for n in r.seq_lens) > model.config.sliding_window
    logit_err, loss_err, scale = leak(packed_logits(model, rows), alone_logits(model, rows))
    tol = SLACK[torch.float32] * max(1.0, scale)
    assert logit_err <= tol and loss_err <= tol, (logit_err, loss_err, tol)


@pytest.mark.parametrize("shared", ["full_attention", "sliding_attention"])
def test_one_mask_for_mixed_layers_is_caught(shared, monkeypatch):
    """The comparison above can fail: one mask shared by both layer types (either one) is a wrong model."""
    model = tiny_gemma3("sdpa")
    rows = random_rows(2, seed=5)
    alone = alone_logits(model, rows)
    window = model.config.sliding_window if shared == "sliding_attention" else None
    monkeypatch.setattr(clmap_model, "_mask_window", lambda config, seq_len: (window, False))
    logit_err, _, scale = leak(packed_logits(model, rows), alone)
    assert logit_err > 100 * SLACK[torch.float32] * max(1.0, scale), logit_err


def test_mixed_layers_need_a_decoder_that_takes_a_mask_per_layer_type(monkeypatch):
    from transformers import MistralModel, Qwen2Model
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    takes = clmap_model._takes_mask_per_layer_type
    assert takes(Gemma3TextModel.__new__(Gemma3TextModel)) and takes(Qwen2Model.__new__(Qwen2Model))
    assert not takes(MistralModel.__new__(MistralModel))  # builds its masks itself: a dict would break it
    model = tiny_gemma3("sdpa")
    monkeypatch.setattr(clmap_model, "_takes_mask_per_layer_type", lambda decoder: False)
    with pytest.raises(
        PackingError, match="window 5.*one packing mask per layer type, which Gemma3TextModel"
    ):
        check_packed_attention(model)
    with pytest.raises(PackingError, match="Gemma3TextModel does not take"):
        MappingObjective(model, GroupTable(["en"], []), ObjectiveConfig())
    model.config._attn_implementation = "flash_attention_2"  # varlen: each layer applies its own window
    assert check_packed_attention(model) == "flash_attention_2"


def test_qwen2_mixed_sliding_and_full_layers_packed_equal_alone():
    from transformers import Qwen2ForCausalLM

    model = tiny_model(
        "sdpa",
        cls=Qwen2ForCausalLM,
        config_cls=Qwen2Config,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,
    )
    assert set(model.config.layer_types) == {"full_attention", "sliding_attention"}
    for rows in (random_rows(2, seed=0), random_rows(2, seed=2, seq_len=8)):  # window < and = the row
        logit_err, _, scale = leak(packed_logits(model, rows), alone_logits(model, rows))
        assert logit_err <= SLACK[torch.float32] * max(1.0, scale)


def test_flash_attention_without_flash_attn_names_the_setting():
    from clmap.config import ModelConfig
    from clmap.model import attention_implementation

    with pytest.raises(ValueError, match="model.attn_implementation=flash_attention_2 needs the flash-attn"):
        attention_implementation(ModelConfig(attn_implementation="flash_attention_2"), torch.device("cpu"))
    with pytest.raises(ValueError, match="model.attn_implementation=varlen_attn needs torch ≥ 2.10 .* CUDA"):
        attention_implementation(ModelConfig(attn_implementation="varlen_attn"), torch.device("cpu"))
    assert attention_implementation(ModelConfig(), torch.device("cpu")) == "sdpa"
    # on CUDA without flash-attn, auto picks torch's own varlen flash attention (document-causal, no mask)
    assert importlib.util.find_spec("flash_attn") is None
    assert attention_implementation(ModelConfig(), torch.device("cuda")) == "varlen_attn"


# -- the objective: losses and the mapping term of packed rows -----------------------------------------------
@pytest.fixture(scope="module")
def stream_rows(small_tokenizer):
    tok = load_tokenizer(small_tokenizer)
    mono = {lang: [f"{lang} text number {i} " * (1 + i % 5) for i in range(30)] for lang in LANGS}
    parallel = {
        p: ([f"source {i} words" for i in range(20)], [f"cíl {i} slova" for i in range(20)]) for p in PAIRS
    }
    table = GroupTable(LANGS, PAIRS)
    sources = build_sources(tok, mono, parallel, seq_len=64, max_segment_tokens=16)
    stream = TrainingStream(tok, table, sources, source_weights(sources, 0.4, 2.0), seq_len=64, window=32)
    rows = [row for _, row in zip(range(4), stream.rows(), strict=False)]
    assert all(len(r.seq_lens) >= 2 for r in rows) and any(r.pairs for r in rows)
    return tok, table, rows


@pytest.mark.parametrize("micro_batch", [1, 2, 4])
@pytest.mark.parametrize("impl", BACKENDS)
def test_objective_on_packed_rows_equals_each_sequence_alone(stream_rows, impl, micro_batch, fake_flash):
    """Per-group loss sums and the pooled-cosine mapping term of packed rows = each sequence's alone."""
    tok, table, rows = stream_rows
    rows = rows[:micro_batch]
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            attn_implementation="sdpa",
        )
    ).eval()
    lm.config._attn_implementation = impl
    objective = MappingObjective(lm, table, ObjectiveConfig())
    with torch.no_grad():
        out = objective(**collate(rows))
        loss_sum = torch.zeros(len(table), dtype=torch.float64)
        map_sum = 0.0
        for row in rows:
            pooled = []
            for offset, n in _offsets(row.seq_lens):
                ids = torch.tensor(row.input_ids[offset : offset + n])[None]
                hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
                logits = lm.lm_head(hidden[-1])[0]
                targets = torch.tensor(row.targets[offset : offset + n])
                losses = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE_INDEX)
                loss_sum[row.groups[offset]] += losses.double().sum()
                for start, end in row.spans:
                    if offset <= start < offset + n:
                        pooled.append(hidden[objective.map_layer][0, start - offset : end - offset].mean(0))
            for i, j in row.pairs:
                map_sum += 1.0 - F.cosine_similarity(pooled[i], pooled[j], dim=0).item()
    torch.testing.assert_close(out.loss_sum.double(), loss_sum, rtol=1e-5, atol=1e-4)
    assert out.map_count.item() == sum(len(r.pairs) for r in rows)
    assert out.map_sum.item() == pytest.approx(map_sum, rel=1e-5, abs=1e-6)
