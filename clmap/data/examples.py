"""How text becomes training sequences: NTP on monolingual text and the bidirectional mapping task.

For a pair (x in language a, y in language b), docs/design.md defines
``seq_ab = <bos> x <2b> y <eos>`` and ``seq_ba = <bos> y <2a> x <eos>``: loss only on the target
side, and the source span of each recorded so the mapping term can pool it (attention is causal, so
the source span of ``seq_ab`` is an encoding of x alone). ``<bos>`` is ``tok.bos_id``: the tokenizer's
EOS for a tokenizer without BOS (Qwen2), see ``clmap/data/tokenizer.py``; :func:`mapping_prompt` is the
same prefix, so evaluation prompts the model exactly as it was trained.

Targets are stored already shifted: ``targets[t]`` is the token the model must predict after reading
``input_ids[: t + 1]``; ``IGNORE_INDEX`` marks positions without loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmap.data.tokenizer import ClmapTokenizer

IGNORE_INDEX = -100


@dataclass
class Sequence:
    input_ids: list[int]
    targets: list[int]
    group: int
    source_span: tuple[int, int] | None = None  # [start, end) of the source tokens, for L_map


@dataclass
class Unit:
    """What the packer places as one piece: one NTP sequence, or both directions of one pair."""

    sequences: list[Sequence]
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (i, j): source spans of sequences i, j align

    def __len__(self) -> int:
        return sum(len(s.input_ids) for s in self.sequences)


class GroupTable:
    """Loss groups: one per NTP language and one per mapping direction of each pair.

    The fused loss returns a sum and a count per group in one call, so these names are what the
    trainer logs (``ntp:cs``, ``cl:en>cs``, ``cl:cs>en``, ...).
    """

    def __init__(self, languages: list[str], pairs: list[str]):
        entries = [(f"ntp:{lang}", "ntp") for lang in languages]
        entries += [(f"text:{pair}", "text") for pair in pairs]  # pairs as plain text (ablation baseline)
        for pair in pairs:
            a, b = pair.split("-")
            entries += [(f"cl:{a}>{b}", "cl_forward"), (f"cl:{b}>{a}", "cl_backward")]
        self.names = [name for name, _ in entries]
        self.kinds = [kind for _, kind in entries]  # ntp | text | cl_forward (a→b as written) | cl_backward
        self.index = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> int:
        return self.index[name]


def ntp_sequence(
    tok: ClmapTokenizer, ids: list[int], group: int, *, doc_start: bool = True, doc_end: bool = True
) -> Sequence:
    """``<bos> text <eos>`` with loss on every next token.

    A document longer than a row is cut into pieces (``build_sources``): only the piece that holds its real
    end gets ``<eos>``, so the model never learns to stop mid-document. A continuation (``doc_start=False``)
    still starts with ``<bos>``, because every attention segment starts as at inference (position 0 holds
    the ``<bos>`` that pretrained models use as an attention sink), but the token right after it carries no
    loss: a document does not start mid-sentence.
    """
    input_ids = [tok.bos_id, *ids] + ([tok.eos_id] if doc_end else [])
    targets = input_ids[1:] + [IGNORE_INDEX]
    if not doc_start:
        targets[0] = IGNORE_INDEX
    return Sequence(input_ids, targets, group)


def mapping_sequence(
    tok: ClmapTokenizer, src_ids: list[int], tgt_ids: list[int], tgt_lang: str, group: int
) -> Sequence:
    """``<bos> src <2tgt> tgt <eos>``: loss on tgt and eos only; the source span is recorded."""
    prompt = [tok.bos_id, *src_ids, *tok.lang_tag(tgt_lang)]
    input_ids = prompt + [*tgt_ids, tok.eos_id]
    targets = [IGNORE_INDEX] * (len(prompt) - 1) + [*tgt_ids, tok.eos_id] + [IGNORE_INDEX]
    return Sequence(input_ids, targets, group, source_span=(1, 1 + len(src_ids)))


def mapping_prompt(tok: ClmapTokenizer, src_text: str, tgt_lang: str) -> list[int]:
    """The prefix a trained model continues with the translation: ``<bos> src <2tgt>``."""
    return [tok.bos_id, *tok.encode(src_text), *tok.lang_tag(tgt_lang)]


def pair_unit(
    tok: ClmapTokenizer,
    groups: GroupTable,
    src_ids: list[int],
    tgt_ids: list[int],
    src_lang: str,
    tgt_lang: str,
    directions: str = "both",
) -> Unit:
    """Both directions of one pair (or a→b only), linked so L_map compares their source encodings."""
    forward = mapping_sequence(tok, src_ids, tgt_ids, tgt_lang, groups[f"cl:{src_lang}>{tgt_lang}"])
    if directions == "forward":
        return Unit([forward])
    backward = mapping_sequence(tok, tgt_ids, src_ids, src_lang, groups[f"cl:{tgt_lang}>{src_lang}"])
    return Unit([forward, backward], pairs=[(0, 1)])


def text_pair_unit(tok: ClmapTokenizer, group: int, src_ids: list[int], tgt_ids: list[int]) -> Unit:
    """A pair as plain concatenated text with NTP loss everywhere (no tag, no masking)."""
    return Unit([ntp_sequence(tok, [*src_ids, *tgt_ids], group)])
