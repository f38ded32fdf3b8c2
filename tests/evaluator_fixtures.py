"""Tiny offline checkpoints for the evaluator tests: a clmap run folder (RUN/config.json + RUN/hf with
clmap's SentencePiece tokenizer), a plain Hugging Face folder, and a byte-level BPE tokenizer of the
Llama-3 kind, shared by the evaluator test modules (each wraps :func:`build_checkpoints` in a fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LANGS = ["en", "cs", "uk", "zh", "ja"]
FIXTURE_TEXT = [
    "The cat sleeps on the mat. Open the file and click Save.",
    "The sky is blue today. Select a cell.",
    "Kočka spí na rohožce. Otevřete soubor a klepněte na Uložit.",
    "Nebe je dnes modré. Vyberte buňku.",
    "Кіт спить на килимку. Відкрийте файл і натисніть Зберегти.",
    "Небо сьогодні блакитне. Виберіть клітинку.",
    "猫在垫子上睡觉。打开文件并单击保存。",
    "今天天空是蓝色的。选择一个单元格。",
    "猫がマットの上で寝ています。ファイルを開いて保存をクリックします。",
    "今日は空が青いです。セルを選択します。",
]


def tiny_llama(vocab_size: int, seed: int, tok) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    return LlamaForCausalLM(config)


def write_run_config(run: Path, *overrides: str) -> Path:
    """RUN/config.json exactly as the trainer saves it (``Config.save``), with ``--section.key=value``."""
    from clmap.config import load_config

    run.mkdir(parents=True, exist_ok=True)
    load_config(None, list(overrides)).save(run / "config.json")
    return run / "config.json"


def byte_level_tokenizer(folder: Path, texts: list[str]):
    """A Llama-3-style byte-level BPE tokenizer trained here, saved as a Hugging Face folder, loaded
    through clmap (kind "hf")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from clmap.data.tokenizer import load_tokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
    )
    fast.save_pretrained(folder)
    return load_tokenizer(folder)


def build_checkpoints(root: Path) -> dict[str, Path]:
    """``run``: a clmap run folder trained with the full objective (RUN/config.json, RUN/hf);
    ``plain``: a Hugging Face folder with a bare SentencePiece model, no clmap config."""
    from clmap.data.tokenizer import SPM_FILE, train_sentencepiece

    tok = train_sentencepiece(FIXTURE_TEXT * 4, root / "tok", LANGS, vocab_size=400)
    run = root / "run"
    tiny_llama(tok.vocab_size, 0, tok).save_pretrained(run / "hf")
    tok.save(run / "hf")
    write_run_config(run)
    plain = root / "plain"
    tiny_llama(tok.vocab_size, 1, tok).save_pretrained(plain)
    (plain / SPM_FILE).write_bytes((root / "tok" / SPM_FILE).read_bytes())
    return {"run": run, "plain": plain, "root": root}


def read_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def metrics_of(report: dict) -> dict[tuple[str, str, str], dict]:
    return {(t, m["key"], m["metric"]): m for t, r in report["tasks"].items() for m in r["metrics"]}
