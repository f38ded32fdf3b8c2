"""The one place that loads a checkpoint and runs it: log-likelihood scoring, generation, hidden states.

Every task (CLNLU, CLQA, summarisation, perplexity, MT, LAC) goes through these helpers, so padding,
batching, device placement and the prompt format are decided once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clmap.checkpoint import HF_DIR, hf_problem
from clmap.data.tokenizer import META_FILE, SPM_FILE, ClmapTokenizer, load_tokenizer

_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be evaluated (no model, no tokenizer)."""


@dataclass
class LoadedModel:
    """A causal LM in eval mode plus its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: ClmapTokenizer
    device: torch.device
    path: Path
    max_length: int

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a clmap run folder (uses RUN/hf) or a plain HF model folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    model_dir = path / HF_DIR if (path / HF_DIR).is_dir() else path
    run_folder = (path / "checkpoints").is_dir() or training_config(path)[1] == path / "config.json"
    if model_dir == path and run_folder:  # its config.json is the training config, not a model's
        raise CheckpointError(
            f"{path} is a clmap run folder without an hf/ export, which training writes at its last step "
            "(unless checkpoint.export_hf=false): rerun the training command to finish the run (it resumes)"
        )
    problem = hf_problem(model_dir) if model_dir.name == HF_DIR or run_folder else None
    if problem:
        raise CheckpointError(
            f"{model_dir} is an incomplete export ({problem}): rerun the training command of {path} to "
            "export it again (it resumes from its last checkpoint)"
        )
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{path}: neither {path}/config.json nor {path}/hf/config.json exists")
    for candidate in (model_dir, model_dir / "tokenizer", path, path / "tokenizer"):
        if (candidate / META_FILE).is_file() or (candidate / SPM_FILE).is_file():
            return model_dir, candidate
        if any((candidate / name).is_file() for name in _HF_TOKENIZER_FILES):
            return model_dir, candidate
    raise CheckpointError(
        f"{path}: no tokenizer found (looked for {META_FILE}, {SPM_FILE} or Hugging Face tokenizer files in "
        f"{model_dir} and {path}); save it with ClmapTokenizer.save next to the model"
    )


def training_config(path: str | Path) -> tuple[dict | None, Path | None]:
    """(clmap config, its file) of the run a checkpoint comes from: ``RUN/config.json`` for ``RUN`` or
    ``RUN/hf``; (None, None) for a model clmap did not train (its config.json is the model's own)."""
    path = Path(path)
    for candidate in (path / "config.json", path.parent / "config.json"):
        if not candidate.is_file():
            continue
        try:
            config = json.loads(candidate.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if isinstance(config, dict) and isinstance(config.get("objective"), dict) and "data" in config:
            return config, candidate
    return None, None


def continuation_ids(tok: ClmapTokenizer, context_text: str | None, continuation: str) -> list[int]:
    """Ids of ``continuation`` as the model sees it after ``context_text``.

    After a text prompt ("...\nCzech:") the answer follows a space, and its natural tokens are those of
    ``context + " " + continuation`` past the context's own tokens (lm-evaluation-harness' rule): a
    byte-level BPE keeps the space in the first piece ("ĠKo"), SentencePiece its word boundary.
    Without a context (the mapping format, after a language tag) it is encoded on its own, as trained.
    """
    if context_text is None:
        return tok.encode(continuation)
    context = tok.encode(context_text)
    whole = tok.encode(f"{context_text} {continuation}")
    if whole[: len(context)] == context and len(whole) > len(context):
        return whole[len(context) :]
    return tok.encode(f" {continuation}")  # the boundary merged across: the answer with its space alone


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load model + tokenizer for evaluation (eval mode, sdpa attention)."""
    from transformers import AutoModelForCausalLM

    model_dir, tokenizer_dir = resolve_checkpoint(path)
    tokenizer = load_tokenizer(tokenizer_dir)
    torch_device = torch.device(device)
    if dtype is None:
        dtype = (
            torch.bfloat16
            if torch_device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.float32
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation="sdpa", local_files_only=True
    )
    model.to(torch_device).eval()
    max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=torch_device,
        path=Path(path),
        max_length=max_length,
    )


def _batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_continuations(
    lm: LoadedModel,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 8,
    desc: str = "scoring",
) -> list[tuple[float, int]]:
    """(sum of log p(continuation | context), number of continuation tokens) for each pair.

    Right padding, longest first (stable memory), context truncated from the left to fit the model.
    """
    if len(contexts) != len(continuations):
        raise ValueError("contexts and continuations differ in length")
    sequences: list[tuple[list[int], int]] = []
    for context, continuation in zip(contexts, continuations, strict=False):
        context, continuation = list(context), list(continuation)
        if not context:
            raise ValueError("every continuation needs at least one context token (e.g. bos)")
        continuation = continuation[: lm.max_length - 1]
        context = context[-(lm.max_length - len(continuation)) :]
        sequences.append((context + continuation, len(context)))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    pad = lm.tokenizer.pad_id  # may equal eos: padding is excluded by the attention mask and the lengths
    for batch in tqdm(_batches(order, batch_size), desc=desc, leave=False, disable=None):
        width = max(len(sequences[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq = sequences[i][0]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        # position t predicts token t + 1, so a continuation is predicted from n_context - 1 on: the head
        # runs on the last ``keep`` positions only, and each row's log-softmax on its own continuation
        # (a 262k vocabulary makes full-width logits of a batch gigabytes)
        first = min(sequences[i][1] for i in batch) - 1
        keep = width - first
        logits = lm.model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), logits_to_keep=keep
        ).logits
        for row, i in enumerate(batch):
            seq, n_context = sequences[i]
            span = logits[row, n_context - 1 - first : len(seq) - 1 - first].float()
            targets = ids[row, n_context : len(seq)].to(lm.device)
            picked = torch.log_softmax(span, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            results[i] = (float(picked.double().sum()), len(seq) - n_context)
    return results


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    num_beams: int = 1,
    batch_size: int = 8,
    stop: Callable[[str], str] | None = None,
    desc: str = "generating",
) -> list[str]:
    """Decoded continuations of ``prompts``: HF ``generate`` with KV cache, left padding, greedy by default.

    ``stop`` post-processes each decoded text (e.g. cut at the first newline for few-shot templates).
    """
    tok = lm.tokenizer
    pad = tok.pad_id  # may equal eos (Qwen2, Llama 3): the attention mask, not the id, marks padding
    outputs: list[str] = [""] * len(prompts)
    room = max(1, lm.max_length - max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for batch in tqdm(_batches(order, batch_size), desc=desc, leave=False, disable=None):
        trimmed = [list(prompts[i])[-room:] for i in batch]
        width = max(len(p) for p in trimmed)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(trimmed):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        generated = lm.model.generate(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=tok.eos_id,
            pad_token_id=pad,
            use_cache=True,
        )
        for row, i in enumerate(batch):
            new_tokens = generated[row, width:].tolist()
            if tok.eos_id in new_tokens:
                new_tokens = new_tokens[: new_tokens.index(tok.eos_id)]
            text = tok.decode(new_tokens)
            outputs[i] = (stop(text) if stop else text).strip()
    return outputs


@torch.no_grad()
def pooled_hidden_states(
    lm: LoadedModel, texts: Sequence[str], batch_size: int = 8, desc: str = "encoding"
) -> torch.Tensor:
    """[layers+1, len(texts), H] fp32: each text encoded alone as ``<bos> text``, mean over its text tokens
    (``<bos>`` is EOS for a tokenizer without BOS, as in training: ``clmap/data/tokenizer.py``).

    Index 0 is the embedding output, index l the output of decoder layer l, and the last index (the
    last decoder layer) is taken after the model's final norm: transformers returns
    ``hidden_states[-1]`` = ``last_hidden_state``. :func:`clmap.objectives.hidden_state_layer` holds
    this convention for ``--lac-layer`` and ``objective.map_layer`` alike. Pooling is
    ``clmap.kernels.pool_spans`` over the flattened batch (the spans skip bos and padding).
    """
    from clmap.kernels import pool_spans

    tok = lm.tokenizer
    encoded = [([tok.bos_id] + tok.encode(text))[: lm.max_length] for text in texts]
    for i, ids in enumerate(encoded):
        if len(ids) < 2:
            raise ValueError(f"text {i} encodes to no tokens: {texts[i]!r}")
    pad = tok.pad_id
    pooled: torch.Tensor | None = None
    for batch in tqdm(_batches(range(len(encoded)), batch_size), desc=desc, leave=False, disable=None):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        out = lm.model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), output_hidden_states=True
        )
        starts = torch.tensor([row * width + 1 for row in range(len(batch))], device=lm.device)
        ends = torch.tensor([row * width + len(encoded[i]) for row, i in enumerate(batch)], device=lm.device)
        layers = [pool_spans(h.reshape(-1, h.shape[-1]), starts, ends).cpu() for h in out.hidden_states]
        if pooled is None:
            pooled = torch.empty(len(layers), len(encoded), layers[0].shape[-1], dtype=torch.float32)
        pooled[:, batch] = torch.stack(layers).float()
    if pooled is None:
        raise ValueError("no texts to encode")
    return pooled
