"""The model: any decoder-only Hugging Face causal LM, from a local folder or built from the config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from clmap.config import ModelConfig
from clmap.data.tokenizer import ClmapTokenizer


def attention_implementation(cfg: ModelConfig, device: torch.device) -> str:
    """flash_attention_2 when flash-attn is importable on CUDA, else PyTorch SDPA.

    Both take packed rows: with restarting ``position_ids`` and no attention mask, transformers
    builds per-sequence attention (cu_seqlens for flash-attn, a block-causal mask for SDPA).
    """
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(cfg: ModelConfig, tok: ClmapTokenizer, device: torch.device) -> PreTrainedModel:
    """Load ``cfg.path`` (never from a hub) or build a Llama-architecture model of the configured size.

    Parameters stay fp32; bf16 compute on GPU comes from FSDP2's mixed-precision policy.
    """
    attn = attention_implementation(cfg, device)
    if cfg.path:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path: {path} is not a Hugging Face model folder (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation=attn, dtype=torch.float32
        )
        if model.get_input_embeddings().weight.shape[0] < tok.vocab_size:
            model.resize_token_embeddings(tok.vocab_size)
        return model
    config = LlamaConfig(
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
    return LlamaForCausalLM(config)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The stack of decoder blocks (the FSDP2 wrapping unit) of a Llama/Mistral/Qwen-style model."""
    backbone = model.get_decoder()
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(model).__name__}: cannot find decoder layers (expected .layers on the decoder)"
        )
    return layers


def count_parameters(model: torch.nn.Module, exclude_embeddings: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings and isinstance(model, PreTrainedModel):
        total -= model.get_input_embeddings().weight.numel()
    return total
