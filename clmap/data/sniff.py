"""Do the two sides of a parallel file look like one language? A cheap check on a sample, for a warning.

A file named ``en-cs`` whose sides are both English trains the mapping task on copies; nothing else
would notice. Two signals, no model: the dominant Unicode script of each side (Latin, Cyrillic, Han, kana,
...), and for sides in the same script, how many of one side's words occur in the other. Measured on
the bundled corpus (100 records per side): translations share at most 21 % of their words in the same
script (en-cs), while unrelated sentences of one language already share 45-94 %.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

SHARED_WORDS_SAME_LANGUAGE = 0.4
_WORD = re.compile(r"[^\W\d_]+")
_IDEOGRAPHIC = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff]")
_SCRIPT_NAMES = {"HIRAGANA": "kana", "KATAKANA": "kana", "CJK": "Han", "HANGUL": "Hangul"}


def dominant_script(texts: Sequence[str]) -> str | None:
    """The Unicode script most of the letters belong to (first word of the character names)."""
    counts: Counter[str] = Counter()
    for text in texts:
        for ch in text:
            if ch.isalpha():
                name = unicodedata.name(ch, "").split(" ")[0]
                counts[_SCRIPT_NAMES.get(name, name.title())] += 1
    return counts.most_common(1)[0][0] if counts else None


def _words(texts: Sequence[str]) -> list[str]:
    """Lower-cased words; ideographic text (no spaces) counts each character as a word."""
    out: list[str] = []
    for text in texts:
        for word in _WORD.findall(text.lower()):
            out.extend(word) if _IDEOGRAPHIC.search(word) else out.append(word)
    return out


def shared_words(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of the words of ``b`` that also occur in ``a``."""
    vocab, words = set(_words(a)), _words(b)
    return sum(w in vocab for w in words) / len(words) if words else 0.0


def same_language_evidence(src: Sequence[str], tgt: Sequence[str]) -> str | None:
    """Why the two sides look like one language, or None when they look like two."""
    if not src:
        return None
    identical = sum(s.strip() == t.strip() for s, t in zip(src, tgt, strict=True)) / len(src)
    if identical >= 0.5:
        return f"{identical:.0%} of the sampled pairs have identical sides"
    script_a, script_b = dominant_script(src), dominant_script(tgt)
    if script_a != script_b:
        return None
    shared = min(shared_words(src, tgt), shared_words(tgt, src))
    if shared >= SHARED_WORDS_SAME_LANGUAGE:
        return f"both sides are in {script_a} script and share {shared:.0%} of their words"
    return None
