"""One tokenizer interface over a SentencePiece model trained on the corpus or any local HF tokenizer.

The mapping objective needs a language tag between source and target (``<2cs>``). A tokenizer trained
here owns those tags as single special pieces; a pretrained Hugging Face tokenizer gets a short text
tag instead (``"\\n[cs] "``), configurable, so no embedding rows have to be added to a pretrained model.
The choice is saved in ``clmap_tokenizer.json`` next to the tokenizer files, so a checkpoint always
evaluates with the tokenizer and tag style it was trained with.

Tokenizers without a BOS token (Qwen2): every sequence, in training and in evaluation, starts with the
tokenizer's EOS token instead (``bos_id`` is then the EOS id, ``has_bos`` is false), so the mapping
sequence is ``<eos> x <2b> y <eos>``. Such models were pre-trained on documents joined by EOS, so EOS is
the token they have seen before the start of a text; it keeps one start token before every source span
(spans still start at 1, pooling still skips it) and a context for the first token a perplexity scores.
lm-evaluation-harness prefixes these models with EOS for the same reason. A tokenizer without a pad
token pads with EOS: padding never carries a loss (targets are ``IGNORE_INDEX`` there) and evaluation
masks it, so pad == eos is never ambiguous.

A SentencePiece model is saved with a ``tokenizer.json`` beside it, converted piece by piece (same ids,
BOS added), so the exported model loads with plain ``AutoTokenizer``; clmap itself reads the
SentencePiece model, so older exports without ``tokenizer.json`` load as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from clmap.cli import UserError

META_FILE = "clmap_tokenizer.json"
SPM_FILE = "tokenizer.model"
DEFAULT_SPECIAL_TAG = "<2{lang}>"
DEFAULT_TEXT_TAG = "\n[{lang}] "


class ClmapTokenizer:
    """Encode/decode plus the ids the objective needs: bos, eos, pad and the per-language tag.

    ``bos_id`` is the id every sequence starts with: the BOS token, or EOS when the tokenizer has none
    (``has_bos`` false); ``pad_id`` is the pad token, or EOS when there is none (module doc).
    """

    def __init__(self, backend, kind: str, tag_format: str, languages: Sequence[str]):
        self.backend = backend
        self.kind = kind
        self.tag_format = tag_format
        self.languages = list(languages)
        self._tags: dict[str, list[int]] = {}
        if kind == "sentencepiece":
            self.eos_id = backend.eos_id()
            self.has_bos = backend.bos_id() >= 0
            self.bos_id = backend.bos_id() if self.has_bos else self.eos_id
            self.pad_id = backend.pad_id() if backend.pad_id() >= 0 else self.eos_id
            self.vocab_size = backend.vocab_size()
            self._special = {backend.piece_to_id(tag_format.format(lang=lang)) for lang in self.languages}
        else:
            self.has_bos = backend.bos_token_id is not None
            self.eos_id = backend.eos_token_id
            self.bos_id = backend.bos_token_id if self.has_bos else self.eos_id
            self.pad_id = backend.pad_token_id if backend.pad_token_id is not None else self.eos_id
            self.vocab_size = len(backend)
            self._special = set()
        if self.eos_id is None or self.eos_id < 0:
            raise ValueError(f"{kind} tokenizer has no eos token; clmap needs one to end sequences")
        if self.bos_id is None or self.bos_id < 0:
            raise ValueError(f"{kind} tokenizer has no bos token; clmap needs one to start sequences")

    # -- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos (the objective adds them where docs/design.md says)."""
        if self.kind == "sentencepiece":
            return self.backend.encode(text)
        return self.backend(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "sentencepiece":
            return self.backend.encode(list(texts))
        return self.backend(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, dropping bos/eos/pad and language tags."""
        drop = {self.bos_id, self.eos_id, self.pad_id} | self._special
        ids = [int(i) for i in ids if int(i) not in drop]
        if self.kind == "sentencepiece":
            return self.backend.decode(ids)
        return self.backend.decode(ids, skip_special_tokens=True)

    def lang_tag(self, lang: str) -> list[int]:
        """Ids of the tag that announces ``lang`` as the target language."""
        if lang not in self._tags:
            if self.kind == "sentencepiece" and lang not in self.languages:
                raise KeyError(
                    f"language {lang!r} has no tag in this tokenizer (trained with {self.languages})"
                )
            tag = self.tag_format.format(lang=lang)
            # A trained tokenizer owns the tag as one piece; encode() would prepend a word boundary.
            self._tags[lang] = (
                [self.backend.piece_to_id(tag)] if self.kind == "sentencepiece" else self.encode(tag)
            )
        return self._tags[lang]

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files and clmap's metadata into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "sentencepiece":
            model = self.backend.serialized_model_proto()
            (directory / SPM_FILE).write_bytes(model)
            hf_tokenizer_from_sentencepiece(model).save_pretrained(directory)
            # The generic class name, which every transformers version maps to its tokenizer.json loader.
            config_file = directory / "tokenizer_config.json"
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            self.backend.save_pretrained(directory)
        meta = {"kind": self.kind, "tag_format": self.tag_format, "languages": self.languages}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_tokenizer(path: str | Path, tag_format: str | None = None) -> ClmapTokenizer:
    """Load a folder written by :meth:`ClmapTokenizer.save`, a SentencePiece model, or an HF tokenizer."""
    path = Path(path)
    meta: dict = {}
    if path.is_dir() and (path / META_FILE).is_file():
        meta = json.loads((path / META_FILE).read_text())
    spm_path = path if path.suffix == ".model" else path / SPM_FILE
    kind = meta.get("kind") or ("sentencepiece" if spm_path.is_file() else "hf")
    if kind == "sentencepiece":
        import sentencepiece as spm

        if not spm_path.is_file():
            raise FileNotFoundError(f"{spm_path}: SentencePiece model not found")
        backend = spm.SentencePieceProcessor(model_file=str(spm_path))
        return ClmapTokenizer(
            backend,
            "sentencepiece",
            tag_format or meta.get("tag_format", DEFAULT_SPECIAL_TAG),
            meta.get("languages", []),
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer folder (expected {SPM_FILE} or Hugging Face files)")
    from transformers import AutoTokenizer

    try:
        backend = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{path}: no tokenizer found there ({exc})") from exc
    return ClmapTokenizer(
        backend, "hf", tag_format or meta.get("tag_format", DEFAULT_TEXT_TAG), meta.get("languages", [])
    )


def sentencepiece_to_tokenizers(model_proto: bytes):
    """(a ``tokenizers.Tokenizer`` that encodes exactly like the SentencePiece model, its trainer spec).

    BPE: the vocabulary with merges ranked by the merged piece's score, as SentencePiece merges the
    best-scoring pair first; Unigram: the pieces and scores (only normal and user-defined pieces match
    text; control and byte pieces get a score that never wins). The
    normaliser follows the model's spec (charsmap, whitespace, dummy prefix), user-defined pieces (the
    language tags) are cut out whole, and unknown characters fall back to byte pieces.
    """
    import re

    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    pieces = proto.pieces
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    normal = kinds.NORMAL
    user_defined = [p.piece for p in pieces if p.type == kinds.USER_DEFINED]
    if trainer.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        ranks = {p.piece: (-p.score, i) for i, p in enumerate(pieces) if p.type == normal}
        ranked = sorted(
            (rank, piece[:k], piece[k:])
            for piece, rank in ranks.items()
            for k in range(1, len(piece))
            if piece[:k] in ranks and piece[k:] in ranks
        )
        model = BPE(
            {p.piece: i for i, p in enumerate(pieces)},
            [(left, right) for _, left, right in ranked],
            unk_token=pieces[trainer.unk_id].piece,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
            ignore_merges=bool(user_defined),  # a tag isolated by the pre-tokenizer is one piece
        )
    elif trainer.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        floor = min(p.score for p in pieces) - 1e6
        scored = [(p.piece, p.score if p.type in (normal, kinds.USER_DEFINED) else floor) for p in pieces]
        model = Unigram(scored, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    else:
        raise ValueError(f"SentencePiece model type {trainer.model_type}: only BPE and Unigram convert")
    tokenizer = Tokenizer(model)
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    if user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    steps = [decoders.Replace("▁", " ")]
    steps += [decoders.ByteFallback()] if trainer.byte_fallback else []
    steps += [decoders.Fuse()]
    steps += [decoders.Strip(content=" ", left=1)] if spec.add_dummy_prefix else []
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer, trainer


def hf_tokenizer_from_sentencepiece(model_proto: bytes):
    """A transformers fast tokenizer over :func:`sentencepiece_to_tokenizers` that adds BOS like Llama's."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokenizer, trainer = sentencepiece_to_tokenizers(model_proto)
    special = {
        name: piece
        for name, piece, index in (
            ("bos_token", trainer.bos_piece, trainer.bos_id),
            ("eos_token", trainer.eos_piece, trainer.eos_id),
            ("unk_token", trainer.unk_piece, trainer.unk_id),
            ("pad_token", trainer.pad_piece, trainer.pad_id),
        )
        if index >= 0
    }
    if trainer.bos_id >= 0:
        bos = trainer.bos_piece
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, trainer.bos_id)]
        )
    # "<s>" typed in a text stays text, as in SentencePiece (and clmap's own encode).
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, split_special_tokens=True, **special)


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be trained as configured (named by its config key and the rule)."""


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | Path,
    languages: Sequence[str],
    vocab_size: int = 8000,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    max_sentences: int = 200_000,
) -> ClmapTokenizer:
    """Train a byte-fallback SentencePiece model with one special tag piece per language.

    ``byte_fallback`` keeps every character encodable (rare CJK characters become bytes, never
    ``<unk>``); the high character coverage keeps common CJK characters as whole pieces.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = [DEFAULT_SPECIAL_TAG.format(lang=lang) for lang in languages]
    prefix = out_dir / "spm"
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t for t in texts if t.strip()),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=character_coverage,
            user_defined_symbols=tags,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            hard_vocab_limit=False,  # small corpora: a smaller vocabulary instead of an error
            minloglevel=2,
            num_threads=2,
        )
    except RuntimeError as exc:  # SentencePiece's own check, an INTERNAL error with a C++ location
        need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(exc))
        if need is None:
            raise
        raise TokenizerError(
            f"tokenizer.vocab_size={vocab_size}: this corpus's sample needs at least {need[1]} pieces (the "
            f"characters SentencePiece keeps at character_coverage={character_coverage}, the language "
            "tags and the special pieces); set it to that or more"
        ) from None
    prefix.with_suffix(".model").rename(out_dir / SPM_FILE)
    prefix.with_suffix(".vocab").unlink(missing_ok=True)
    backend = spm.SentencePieceProcessor(model_file=str(out_dir / SPM_FILE))
    tokenizer = ClmapTokenizer(backend, "sentencepiece", DEFAULT_SPECIAL_TAG, languages)
    tokenizer.save(out_dir)
    return tokenizer


def train_byte_level_bpe(
    texts: Iterable[str], out_dir: str | Path, languages: Sequence[str], vocab_size: int
) -> ClmapTokenizer:
    """Train a byte-level BPE (the ``tokenizers`` library, as GPT-2/Llama 3 tokenizers are) with one
    special tag piece per language, saved as a Hugging Face tokenizer folder.

    Byte-level: every text is encodable without ``<unk>``. Where SentencePiece takes long or stops short
    at a large vocabulary (Llama 3's 128256), this trains the full size on the bundled corpus in seconds.
    ``vocab_size`` counts the special pieces (pad, bos, eos and the tags).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tags = [DEFAULT_SPECIAL_TAG.format(lang=lang) for lang in languages]
    special = ["<pad>", "<s>", "</s>", *tags]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special):  # the trainer would silently keep them all
        raise TokenizerError(
            f"tokenizer.vocab_size={vocab_size}: a byte-level BPE needs at least "
            f"{len(alphabet) + len(special)} pieces ({len(alphabet)} bytes and {len(special)} special "
            "pieces); set it to that or more"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator((t for t in texts if t.strip()), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer = ClmapTokenizer(fast, "hf", DEFAULT_SPECIAL_TAG, languages)
    tokenizer.save(out_dir)
    return tokenizer
