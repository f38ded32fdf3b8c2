"""The model: a supported decoder-only Hugging Face causal LM, from a local folder or built from the config.

Supported: decoder-only models laid out like Llama (Llama, Mistral, Qwen2, Gemma and the many
families that copy that layout), checked by :func:`check_supported` before any weight is loaded:

- the decoder exposes its blocks as ``model.get_decoder().layers`` (the layer the mapping term reads,
  the layer count for MFU) and the FSDP units (``model.fsdp_wrap`` or the model's own
  ``_no_split_modules``) are modules of that model;
- its attention goes through transformers' attention interface (``_supports_attention_backend``), which
  is what lets sdpa / eager / flash_attention_2 be chosen and receive the packed rows' sequence
  boundaries (:func:`packed_attention_inputs`), so no token attends across packed sequences;
- its logits are exactly ``hidden @ lm_head.weight.T``: the fused loss reads the decoder's last hidden
  state and the output embedding, so a bias, a logit scale or a final soft-cap would be silently
  dropped from training.

Encoder-decoder models, GPT-2-style layouts (blocks under ``.h``), Gemma 2 (final logit soft-cap),
Cohere and Granite (logit scale) fail at start with :class:`UnsupportedModelError`, naming the rule
they break.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from clmap.cli import UserError
from clmap.config import ModelConfig
from clmap.data.tokenizer import ClmapTokenizer

#: Config fields that change the logits after ``lm_head`` (Gemma 2/3 soft-cap, Cohere, Granite, ...):
#: any value other than these neutral ones makes the model unsupported.
LOGIT_TRANSFORMS = {
    "final_logit_softcapping": (None, 0, 0.0),
    "logit_scale": (None, 1, 1.0),
    "logits_scaling": (None, 1, 1.0),
    "output_multiplier": (None, 1, 1.0),
    "logits_soft_cap": (None, 0, 0.0),
}


class UnsupportedModelError(UserError, ValueError):
    """A model clmap cannot train correctly; raised before its weights are loaded (one line, exit 2)."""


class ModelPathError(UserError, FileNotFoundError):
    """``model.path`` is not a model folder."""


def attention_implementation(cfg: ModelConfig, device: torch.device) -> str:
    """auto: flash_attention_2 when flash-attn is importable on CUDA, else torch's own varlen flash
    attention (``varlen_attn``, torch ≥ 2.10) on CUDA, else PyTorch SDPA.

    Either way packed rows stay exact: see :func:`packed_attention_inputs` for how each implementation is
    told where the sequences of a row start and end.
    """
    cuda = device.type == "cuda"
    has_flash = cuda and importlib.util.find_spec("flash_attn") is not None
    if cfg.attn_implementation == "flash_attention_2" and not has_flash:
        raise ValueError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA device "
            f"(device here: {device.type}); use varlen_attn, sdpa or auto"
        )
    if cfg.attn_implementation == VARLEN_ATTN and not (cuda and VARLEN_KERNEL is not None):
        raise ValueError(
            f"model.attn_implementation={VARLEN_ATTN} needs torch ≥ 2.10 (torch.nn.attention.varlen) and a "
            f"CUDA device (here: torch {torch.__version__}, device {device.type}); use sdpa or auto"
        )
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if has_flash:
        return "flash_attention_2"
    return VARLEN_ATTN if cuda and VARLEN_KERNEL is not None else "sdpa"


def load_model_config(path: str | Path) -> PretrainedConfig:
    """The ``config.json`` of a local model folder (never from a hub), with errors that name the folder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelPathError(f"model.path: {path} is not a Hugging Face model folder (no config.json)")
    try:
        saved = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and {"objective", "data", "train"} <= saved.keys():  # a clmap run's config
        export = "its hf/ export" if (path / "hf").is_dir() else "it has no hf/ export yet"
        raise ModelPathError(
            f"model.path: {path} is a clmap run folder, not a model ({export}): continue from it with "
            f"--init-from {path}, or resume it with --run_dir={path}"
        )
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError) as exc:
        raise UnsupportedModelError(
            f"model.path: {path}/config.json: transformers cannot read it: {exc}"
        ) from exc


def check_supported(config: PretrainedConfig, fsdp_wrap: Sequence[str] = (), where: str = "model") -> None:
    """Raise :class:`UnsupportedModelError` unless clmap trains this architecture correctly (module doc).

    Builds the model on the meta device (no memory, no weights) to look at its modules.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    name = f"{where} ({config.model_type})"
    rule = "clmap trains decoder-only causal LMs laid out like Llama"
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model; {rule}")
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise UnsupportedModelError(f"{name} has no causal-LM class in transformers; {rule}") from None
    if not getattr(model_class, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{name}: {model_class.__name__} does not use transformers' attention interface, so packed rows "
            f"would attend across sequences; {rule}"
        )
    for field, neutral in LOGIT_TRANSFORMS.items():
        value = getattr(config, field, None)
        if value not in neutral:
            raise UnsupportedModelError(
                f"{name}: config.{field}={value} transforms the logits after lm_head, which clmap's fused "
                f"loss (hidden @ lm_head.weight) would leave out; {rule}"
            )
    with torch.device("meta"):
        skeleton = model_class._from_config(config)
    head = skeleton.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise UnsupportedModelError(
            f"{name}: the output layer of {model_class.__name__} is not a bias-free Linear; {rule}"
        )
    decoder_layers(skeleton)
    fsdp_units(skeleton, fsdp_wrap)


def check_model(cfg: ModelConfig) -> None:
    """Fail at start, before data and weights are loaded, if ``model.path`` is a model clmap cannot train."""
    if cfg.path:
        check_supported(load_model_config(cfg.path), cfg.fsdp_wrap, where=f"model.path {cfg.path}")


def build_model(cfg: ModelConfig, tok: ClmapTokenizer, device: torch.device) -> PreTrainedModel:
    """Load ``cfg.path`` (never from a hub) or build a Llama-architecture model of the configured size.

    Parameters stay fp32; bf16 compute on GPU comes from FSDP2's mixed-precision policy.
    """
    attn = attention_implementation(cfg, device)
    if cfg.path:
        check_model(cfg)
        model = AutoModelForCausalLM.from_pretrained(
            Path(cfg.path), local_files_only=True, attn_implementation=attn, dtype=torch.float32
        )
        if model.get_input_embeddings().weight.shape[0] < tok.vocab_size:
            model.resize_token_embeddings(tok.vocab_size)
        return refuse_padded_batches(model)
    return refuse_padded_batches(LlamaForCausalLM(_llama_config(cfg, tok, attn)))


def _llama_config(cfg: ModelConfig, tok: ClmapTokenizer, attn: str) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
        attn_implementation=attn,
    )


def parameter_count(cfg: ModelConfig, tok: ClmapTokenizer) -> int:
    """Parameters of the model :func:`build_model` makes, counted on the meta device (nothing allocated):
    what the memory check (clmap/memory.py) weighs before the model exists."""
    with torch.device("meta"):
        if cfg.path:
            model = AutoModelForCausalLM.from_config(load_model_config(cfg.path))
        else:
            model = LlamaForCausalLM(_llama_config(cfg, tok, "sdpa"))
    return count_parameters(model)


def refuse_padded_batches(model: PreTrainedModel) -> PreTrainedModel:
    """With varlen_attn, a forward given a padding mask (a 2-D ``attention_mask`` with zeros) raises:
    transformers prepares no mask for this implementation, so the padding would be attended silently.
    Packed rows (the trainer's, with ``cu_seq_lens``) pass no mask and cost no check; other
    implementations are untouched."""
    if model.config._attn_implementation != VARLEN_ATTN:
        return model

    def check(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if torch.is_tensor(mask) and mask.dim() == 2 and not bool(mask.all()):
            raise PackingError(
                f"model.attn_implementation={VARLEN_ATTN} cannot take a padded batch (attention_mask with "
                "zeros): pack the sequences (cu_seq_lens) or load the model with sdpa"
            )

    model.get_decoder().register_forward_pre_hook(check, with_kwargs=True)
    return model


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The stack of decoder blocks, ``model.get_decoder().layers``: what the map layer and MFU count."""
    backbone = model.get_decoder()
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(
            f"{type(model).__name__}: its decoder {type(backbone).__name__} has no .layers stack of decoder "
            "blocks; clmap trains decoder-only causal LMs laid out like Llama"
        )
    return layers


def fsdp_units(model: torch.nn.Module, wrap: Sequence[str] = ()) -> list[torch.nn.Module]:
    """The modules sharded as one FSDP unit each: those of the classes named in ``wrap``
    (``model.fsdp_wrap``), else of the model's own ``_no_split_modules``; outermost matches, in order."""
    classes = set(wrap) or set(getattr(model, "_no_split_modules", None) or ())
    source = "model.fsdp_wrap" if wrap else f"{type(model).__name__}._no_split_modules"
    if not classes:
        raise UnsupportedModelError(
            f"{type(model).__name__} declares no _no_split_modules; "
            "name its decoder block class in model.fsdp_wrap"
        )
    units: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        for child in module.children():
            if type(child).__name__ in classes:
                units.append(child)
            else:
                visit(child)

    visit(model)
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    if head is not None and any(head is m for unit in units for m in unit.modules()):
        raise UnsupportedModelError(
            f"{source}={sorted(classes)}: a unit holds the output layer, which the fused loss reads whole "
            "in the root's forward; name the decoder block class instead"
        )
    if not units:
        present = sorted({type(m).__name__ for m in model.modules()})
        raise UnsupportedModelError(
            f"{source}={sorted(classes)}: no module of these classes in {type(model).__name__} "
            f"(its module classes: {', '.join(present)})"
        )
    return units


def count_parameters(model: torch.nn.Module, exclude_embeddings: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings and isinstance(model, PreTrainedModel):
        total -= model.get_input_embeddings().weight.numel()
    return total


# -- packed rows ----------------------------------------------------------------------------------
# A training row holds several sequences (and a padding tail) back to back; none may attend to another.
# The boundaries are known on the host when the rows are collated (``collate``'s ``cu_seq_lens``, the
# offsets of every sequence over the flattened [B·S] token axis, the padding tail of a row being a sequence
# of its own), so each implementation is told them explicitly:
#   flash_attention_2  varlen: the micro-batch is flattened into one [1, B·S] row and ``cu_seq_lens_q/k`` +
#                      ``max_length_q/k`` (transformers' FlashAttentionKwargs) make every layer call
#                      flash_attn_varlen_func. No mask is materialised, no FLOP is spent across sequences,
#                      any micro-batch size works (transformers' own detection from position_ids only works
#                      at batch size 1, and reads them in every layer: one device sync per layer). Its mask
#                      preparation still reads position_ids once per forward (a result FA2 then ignores).
#   varlen_attn        the same varlen layout and keyword arguments, served by torch's own flash kernel
#                      (``torch.nn.attention.varlen.varlen_attn``, :func:`varlen_attention_forward`):
#                      document-causal without the flash-attn package, GQA and sliding windows included. It
#                      has no mask function, so transformers prepares no mask and never reads position_ids.
#   sdpa, eager        mask: a 4-D block-causal mask [B, 1, S, S] built on the device from the offsets (bool
#                      for sdpa: True attends; additive 0 / dtype-min for eager, as transformers makes them).
#                      transformers passes a 4-D mask through untouched, so it never inspects position_ids
#                      (its packed-sequence detection costs a device sync per forward). SDPA has no varlen
#                      form: a mask is the only exact way, and flattening would only grow it to (B·S)².
# Sliding-window layers mixed with full ones (Gemma 3) get one mask per layer type, as a dict the decoder
# hands each layer by its type. Anything else (another implementation, a model whose attention cannot take
# the offsets, a mixed model whose decoder takes no per-type masks) is refused before training starts.
PACKED_ATTENTION: dict[str, str] = {
    "flash_attention_2": "varlen",
    "varlen_attn": "varlen",
    "sdpa": "mask",
    "eager": "mask",
}
VARLEN_ATTN = "varlen_attn"


def _torch_varlen_attn():
    """(torch's ``varlen_attn``, the names of its parameters), or (None, empty) before torch 2.10. Found
    once at import, so a compiled block reads two globals (no ``inspect`` under dynamo); the tests swap in
    a plain-torch stand-in on the CPU, where the real kernel (flash attention) does not run."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


VARLEN_KERNEL, VARLEN_PARAMS = _torch_varlen_attn()


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface on ``torch.nn.attention.varlen.varlen_attn``: q [1, Hq, T, D] and
    k/v [1, Hkv, T, D] of the flattened micro-batch, the sequences' offsets from
    :func:`packed_attention_inputs`; returns [1, T, Hq, D] like the other implementations. Without offsets
    (a forward outside the trainer) each of the B rows is one causal sequence: no padding mask is made
    for this implementation, so it suits packed rows and unpadded (or right-padded) sequences.

    Causal within each sequence, nothing across them; a sliding window of W keeps the W most recent keys
    (itself included), as transformers' masks do. K/V heads are shared by GQA in the kernel where this
    torch offers ``enable_gqa``, else repeated per query head (the flash kernels of older versions).
    """
    batch, _, seq, _ = query.shape
    if cu_seq_lens_q is None:  # not packed: each row one causal sequence (no padding mask is prepared)
        cu_seq_lens_q = cu_seq_lens_k = torch.arange(
            0, (batch + 1) * seq, seq, dtype=torch.int32, device=query.device
        )
        max_length_q = max_length_k = seq
    elif batch != 1:
        raise PackingError(
            f"{VARLEN_ATTN}: cu_seq_lens index one flattened row (clmap.model.packed_attention_inputs), "
            f"got {batch} rows"
        )
    if dropout:
        raise PackingError(f"{VARLEN_ATTN} has no attention dropout (got {dropout})")
    kernel, params = VARLEN_KERNEL, VARLEN_PARAMS
    q, k, v = (x.transpose(1, 2).flatten(0, 1) for x in (query, key, value))  # [B·S, H, D]
    extra: dict = {"scale": scaling}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:  # torch ≥ 2.12: K/V heads shared in the kernel
            extra["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if "window_size" in params:  # torch ≥ 2.11: (left, right); (-1, 0) is causal
        extra["window_size"] = (-1, 0) if sliding_window is None else (sliding_window - 1, 0)
    elif sliding_window is not None:
        raise PackingError(
            f"{VARLEN_ATTN}: this torch ({torch.__version__}) has no sliding windows in varlen_attn "
            f"(window_size, torch ≥ 2.11), the model has sliding_window={sliding_window}; use sdpa"
        )
    else:  # torch 2.10
        extra["is_causal"] = True
    out = kernel(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, **extra)
    return out.view(batch, seq, *out.shape[1:]), None


AttentionInterface.register(VARLEN_ATTN, varlen_attention_forward)


class PackingError(ValueError):
    """A model / attention implementation with which packed sequences could attend to each other."""


def check_packed_attention(model: PreTrainedModel) -> str:
    """The model's attention implementation if packing can be made exact with it, else PackingError."""
    impl = model.config._attn_implementation
    if impl not in PACKED_ATTENTION:
        raise PackingError(
            f"model.attn_implementation: {impl!r} cannot keep packed sequences apart in clmap; "
            f"use one of {', '.join(PACKED_ATTENTION)}"
        )
    unknown = set(_layer_types(model.config)) - {"full_attention", "sliding_attention"}
    if unknown:
        raise PackingError(
            f"{type(model).__name__}: layers of type {', '.join(sorted(unknown))} are not supported with "
            "packed rows (only full and sliding-window attention)"
        )
    types = set(_layer_types(model.config))
    mixed = {"full_attention", "sliding_attention"} <= types and getattr(model.config, "sliding_window", None)
    if PACKED_ATTENTION[impl] == "mask" and mixed and not _takes_mask_per_layer_type(model.get_decoder()):
        decoder = type(model.get_decoder()).__name__
        raise PackingError(
            f"{type(model).__name__}: sliding-window layers (window {model.config.sliding_window}) "
            f"mixed with full-attention layers need one packing mask per layer type, which {decoder} does "
            "not take; use model.attn_implementation=flash_attention_2"
        )
    if PACKED_ATTENTION[impl] == "varlen":
        # The offsets reach attention through **kwargs of the decoder, of each block and of its attention.
        layer = decoder_layers(model)[0]
        for name, module in (
            ("decoder", model.get_decoder()),
            ("decoder layer", layer),
            ("attention", getattr(layer, "self_attn", None)),
        ):
            if module is None or not _takes_var_keywords(module.forward):
                raise PackingError(
                    f"model.attn_implementation={impl}: the {name} of {type(model).__name__} "
                    "does not pass keyword arguments on to attention, so packed sequences cannot be given "
                    "their boundaries (cu_seq_lens); use sdpa"
                )
    return impl


def packed_attention_inputs(
    impl: str,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    max_seq_len: int,
    config,
) -> dict:
    """Decoder keyword arguments that confine attention to each packed sequence (see the notes above).

    ``inputs_embeds`` [B, S, H] and ``position_ids`` [B, S] (restarting at every sequence); ``cu_seq_lens``
    int32 [n + 1], the sequences' offsets over the flat B·S tokens; ``max_seq_len`` the longest one. Token t
    of the flat axis stays token t of the decoder's output in both layouts.
    """
    if PACKED_ATTENTION[impl] == "varlen":
        return {
            "inputs_embeds": inputs_embeds.flatten(0, 1)[None],
            "position_ids": position_ids.reshape(1, -1),
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_seq_len,
            "max_length_k": max_seq_len,
        }
    batch, seq = position_ids.shape
    device = inputs_embeds.device
    tokens = torch.arange(batch * seq, device=device, dtype=cu_seq_lens.dtype)
    sequence = torch.searchsorted(cu_seq_lens, tokens, right=True).view(batch, seq)
    q = torch.arange(seq, device=device)
    allowed = (sequence[:, :, None] == sequence[:, None, :]) & (q[:, None] >= q[None, :])
    window, per_layer_type = _mask_window(config, seq)
    masks = {"full_attention": allowed}
    if window is not None:
        masks["sliding_attention"] = allowed & ((q[:, None] - q[None, :]) < window)
    masks = {kind: mask[:, None] for kind, mask in masks.items()}
    if impl == "eager":  # eager attention adds its mask to the scores
        zero = torch.zeros((), dtype=inputs_embeds.dtype, device=device)
        low = torch.finfo(inputs_embeds.dtype).min
        masks = {kind: torch.where(mask, zero, low) for kind, mask in masks.items()}
    # Mixed full / sliding layers get one mask per layer type (the decoder picks each layer's own; checked
    # by check_packed_attention); otherwise every layer shares the one mask.
    mask = masks if per_layer_type else masks["sliding_attention" if window is not None else "full_attention"]
    return {"inputs_embeds": inputs_embeds, "position_ids": position_ids, "attention_mask": mask}


def _layer_types(config) -> list[str]:
    """Attention type per layer; Mistral-style configs only carry ``sliding_window`` (then every layer)."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    sliding = getattr(config, "sliding_window", None) is not None
    return ["sliding_attention" if sliding else "full_attention"] * config.num_hidden_layers


def _mask_window(config, seq_len: int) -> tuple[int | None, bool]:
    """(the sliding window a mask must apply, whether full and sliding layers need masks of their own).

    The window is None when no layer's window is shorter than a row. Sliding layers mixed with full ones
    (Gemma 3: window 512, 5 sliding per full layer) get a mask per layer type, which the decoder must
    accept as a dict (:func:`_takes_mask_per_layer_type`, checked before training); else PackingError.
    """
    window = getattr(config, "sliding_window", None)
    types = set(_layer_types(config))
    if window is None or window >= seq_len or "sliding_attention" not in types:
        return None, False
    return window, "full_attention" in types


def _takes_mask_per_layer_type(decoder: torch.nn.Module) -> bool:
    """Whether the decoder uses a dict ``attention_mask`` as one mask per layer type, as transformers' own
    mixed-attention decoders do (Gemma 2/3, Qwen2, ...), instead of building masks of its own from it."""
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False
    return "causal_mask_mapping := attention_mask, dict" in source


def _takes_var_keywords(fn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
