"""Per-language perplexity and bits per byte on held-out monolingual text.

Token-level perplexity depends on the tokenizer (a coarser vocabulary has fewer, harder tokens), so
bits per UTF-8 byte is reported next to it: it compares checkpoints with different tokenizers.
Long texts are cut into consecutive windows, each fed as ``<bos> window``; every text token is
scored exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clmap.evaluate.lm import LoadedModel, score_continuations


def evaluate_perplexity(
    lm: LoadedModel, texts: Sequence[str], batch_size: int = 8, max_length: int | None = None, lang: str = ""
) -> dict:
    """PPL = exp(total NLL / tokens); bits/byte = total NLL / (ln 2 · UTF-8 bytes)."""
    tok = lm.tokenizer
    window = min(max_length or lm.max_length, lm.max_length) - 1
    contexts, continuations = [], []
    for text in texts:
        ids = tok.encode(text)
        for start in range(0, len(ids), window):
            contexts.append([tok.bos_id])
            continuations.append(ids[start : start + window])
    scored = score_continuations(lm, contexts, continuations, batch_size=batch_size, desc=f"PPL {lang}")
    nll = -sum(logp for logp, _ in scored)
    tokens = sum(n for _, n in scored)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "ppl": math.exp(nll / tokens) if tokens else float("nan"),
        "bits_per_byte": nll / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "tokens": tokens,
        "bytes": n_bytes,
        "n": len(texts),
    }
