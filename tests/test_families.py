"""Model families end to end, offline: tiny Llama-3, Qwen2, Mistral and Gemma checkpoints (a config-built
model and a tokenizer trained here with ``tokenizers``, saved as the family ships them), each trained by two
processes from ``--model.path``, resumed, exported, reloaded with plain transformers and evaluated.

Also: what replaces ``<bos>`` for a tokenizer without one, FSDP units from ``_no_split_modules``, the clear
error for a model clmap does not support, and the SentencePiece export that plain ``AutoTokenizer`` loads.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import corpus_texts, run_train, tiny_overrides

from clmap import BUNDLED_CORPUS
from clmap.data.examples import mapping_prompt, mapping_sequence, ntp_sequence
from clmap.data.tokenizer import SPM_FILE, load_tokenizer, train_sentencepiece
from clmap.metrics import read_metrics
from clmap.model import UnsupportedModelError, check_supported, decoder_layers, fsdp_units, load_model_config

FAMILIES = ["llama3", "qwen2", "mistral", "gemma"]
SAMPLES = ["Dobrý den, světe.", "Open the file and click Save.", "Відкрийте файл", " two  spaces 42 ✓"]
LOSS_KEYS = ["loss/total", "loss/ntp", "loss/cl", "loss/map"]
SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
)
# The pre-tokenisation regexes the families ship (Llama 3's tiktoken pattern, Qwen2's variant of it).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


# -- tiny checkpoints, built offline ---------------------------------------------------------------
def _train_bpe(texts, pre_tokenizer, *, normalizer=None, specials=(), byte_level=False, vocab_size=700):
    """(vocab, merges) of a BPE model trained on ``texts`` with the family's pre-tokenisation."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def _llama3_tokenizer(texts):
    """Byte-level BPE with Llama 3's split, its special tokens after the vocabulary, BOS added, no pad."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _train_bpe(texts, split, byte_level=True)
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer, tok.decoder = split, decoders.ByteLevel()
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1])


def _qwen2_tokenizer(texts):
    """Qwen2's own class over a byte-level BPE trained here: no BOS, pad = eos = <|endoftext|>."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import Qwen2Tokenizer

    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _train_bpe(texts, split, normalizer=normalizers.NFC(), byte_level=True)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _sentencepiece_style_vocab(texts, specials, prepend: str):
    """A ▁-metaspace BPE with byte-fallback pieces, the layout of SentencePiece-converted tokenizers."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True)
    return _train_bpe(texts, split, specials=[*specials, *BYTE_PIECES])


def _mistral_tokenizer(texts):
    """Mistral ships a Llama (SentencePiece) tokenizer: <unk> <s> </s>, byte pieces, dummy prefix, no pad."""
    from transformers import LlamaTokenizer

    vocab, merges = _sentencepiece_style_vocab(texts, ["<unk>", "<s>", "</s>"], prepend="first")
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def _gemma_tokenizer(texts):
    """Gemma's class: <pad> <eos> <bos> <unk> <mask> first, byte fallback, spaces as ▁, no dummy prefix."""
    from transformers import GemmaTokenizer

    vocab, merges = _sentencepiece_style_vocab(
        texts, ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], prepend="never"
    )
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def _model_config(family: str, tok):
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vocab = -(-len(tok) // 64) * 64  # padded to a multiple of 64, as the families ship it
    if family == "llama3":
        return LlamaConfig(vocab_size=vocab, rope_theta=500000.0, tie_word_embeddings=False, **ids, **SIZES)
    if family == "qwen2":
        return Qwen2Config(
            vocab_size=vocab, tie_word_embeddings=True, use_sliding_window=False, **ids, **SIZES
        )
    if family == "mistral":
        return MistralConfig(vocab_size=vocab, sliding_window=4096, tie_word_embeddings=False, **ids, **SIZES)
    return GemmaConfig(vocab_size=vocab, head_dim=16, tie_word_embeddings=True, **ids, **SIZES)


TOKENIZERS = {
    "llama3": _llama3_tokenizer,
    "qwen2": _qwen2_tokenizer,
    "mistral": _mistral_tokenizer,
    "gemma": _gemma_tokenizer,
}


def build_checkpoint(family: str, texts: list[str], out: Path) -> Path:
    """``save_pretrained`` of a config-built model of ``family`` and its tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM

    tok = TOKENIZERS[family](texts)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_model_config(family, tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def family_texts(small_corpus) -> list[str]:
    return corpus_texts(small_corpus)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, family_texts, small_corpus, tmp_path_factory):
    """One family: its checkpoint, a 2-process run of 6 steps, and a 2-process resume from step 3.

    The resume starts in a fresh run folder from a copy of the first run's step-3 checkpoint, so both
    runs' steps 4-6 and exports must agree.
    """
    name = request.param
    root = tmp_path_factory.mktemp(name)
    model_dir = build_checkpoint(name, family_texts, root / "model")
    extra = {"model.path": model_dir, "tokenizer.path": "", "checkpoint.keep": 2}
    run = root / "run"
    first = run_train(tiny_overrides(small_corpus, None, run, **extra), nproc=2)
    resumed_run = root / "resumed"
    (resumed_run / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step_00000003", resumed_run / "checkpoints" / "step_00000003")
    (resumed_run / "checkpoints" / "latest").write_text("step_00000003\n")
    resumed = run_train(tiny_overrides(small_corpus, None, resumed_run, **extra), nproc=2)
    return {
        "name": name,
        "model": model_dir,
        "run": run,
        "resumed": resumed_run,
        "logs": (first.stdout, resumed.stdout),
    }


# -- the full cycle, per family --------------------------------------------------------------------
def test_two_process_training_resumes_on_the_same_curve(family):
    records = read_metrics(family["run"] / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[-1]["loss/total"] < records[0]["loss/total"]  # it learns
    assert -1.0 <= records[2]["dev/lac/en-cs"] <= 1.0  # pooled source spans of the dev pairs
    assert f"resumed from {family['resumed'] / 'checkpoints' / 'step_00000003'}" in family["logs"][1]
    resumed = {r["step"]: r for r in read_metrics(family["resumed"] / "metrics.jsonl")}
    assert sorted(resumed) == [4, 5, 6]
    for record in records[3:]:
        for key in LOSS_KEYS:
            assert resumed[record["step"]][key] == pytest.approx(record[key], rel=2e-4, abs=1e-5), key


def test_export_reloads_with_plain_transformers(family):
    """Same ids as the family's own tokenizer; same logits as the trained weights and the resumed run."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clmap.checkpoint import Checkpointer

    original = AutoTokenizer.from_pretrained(family["model"])
    exported = AutoTokenizer.from_pretrained(family["run"] / "hf")
    clmap_tok = load_tokenizer(family["run"] / "hf")
    for text in SAMPLES:
        ids = exported(text)["input_ids"]
        assert ids == original(text)["input_ids"]
        start = [clmap_tok.bos_id] if clmap_tok.has_bos else []
        assert ids == start + clmap_tok.encode(text)
    assert clmap_tok.has_bos == (family["name"] != "qwen2")

    model = AutoModelForCausalLM.from_pretrained(family["run"] / "hf")
    assert type(model).__name__ == type(AutoModelForCausalLM.from_pretrained(family["model"])).__name__
    ids = torch.tensor([mapping_prompt(clmap_tok, "Dobrý den, světe.", "en")])
    logits = model(ids).logits
    trained = AutoModelForCausalLM.from_config(model.config)
    state = {"model": {f"lm.{k}": v for k, v in trained.state_dict().items()}}
    dcp.load(state, checkpoint_id=str(Checkpointer(family["run"], dist_info=None).latest()))
    trained.load_state_dict({k.removeprefix("lm."): v for k, v in state["model"].items()})
    torch.testing.assert_close(trained(ids).logits, logits)
    resumed = AutoModelForCausalLM.from_pretrained(family["resumed"] / "hf")
    torch.testing.assert_close(resumed(ids).logits, logits, rtol=1e-4, atol=1e-4)


def test_evaluation_runs_on_the_export(family, tmp_path):
    from clmap.evaluate.__main__ import main

    out = tmp_path / "eval"
    argv = [
        "--checkpoint",
        str(family["run"]),
        "--out",
        str(out),
        "--tasks",
        "ppl,lac,mt",
        "--pairs",
        "en-cs",
    ]
    argv += ["--limit", "3", "--n-boot", "20", "--batch-size", "2", "--max-new-tokens", "3"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    metrics = {
        (t, m["key"], m["metric"]): m["value"] for t, r in report["tasks"].items() for m in r["metrics"]
    }
    assert metrics["ppl", "cs", "ppl"] > 1 and metrics["ppl", "en", "ppl"] > 1
    assert len(report["tasks"]["lac"]["details"]["en-cs"]["layers"]) == 3  # embeddings + 2 layers
    assert ("mt", "en→cs", "chrf++") in metrics
    assert report["tasks"]["mt"]["details"]["en→cs"]["prompt"] != "few-shot template"  # clmap's format


# -- cheap checks on the untrained checkpoints -----------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(family_texts, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_checkpoint(name, family_texts, root / name) for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_training_and_evaluation_agree_on_the_start_token(checkpoints, name):
    """``<bos> x <2b> y <eos>`` with EOS as the start token when there is no BOS (Qwen2): the evaluation
    prompt is the training sequence's prefix and the source span starts after the start token."""
    tok = load_tokenizer(checkpoints[name])
    src, tgt = tok.encode("Dobrý den."), tok.encode("Good day.")
    seq = mapping_sequence(tok, src, tgt, "en", group=0)
    prompt = mapping_prompt(tok, "Dobrý den.", "en")
    assert seq.input_ids[: len(prompt)] == prompt
    assert seq.input_ids[0] == tok.bos_id and seq.input_ids[seq.source_span[0] : seq.source_span[1]] == src
    assert seq.input_ids[-1] == tok.eos_id and seq.targets[-2] == tok.eos_id
    assert ntp_sequence(tok, src, group=0).input_ids == [tok.bos_id, *src, tok.eos_id]
    if name == "qwen2":
        assert not tok.has_bos and tok.bos_id == tok.eos_id == tok.pad_id
    else:
        assert tok.has_bos and tok.bos_id != tok.eos_id


@torch.no_grad()
def _unpadded_score(model, context: list[int], continuation: list[int]) -> float:
    logits = model(torch.tensor([context + continuation])).logits[0, :-1].float()
    picked = torch.log_softmax(logits, -1)[len(context) - 1 :].gather(-1, torch.tensor(continuation)[:, None])
    return float(picked.sum())


@torch.no_grad()
def _unpadded_greedy(model, prompt: list[int], steps: int, eos: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        if ids[-1] == eos:
            break
    return ids[len(prompt) :]


@pytest.mark.parametrize("name", ["qwen2", "llama3"])
def test_scoring_and_generation_ignore_padding_when_pad_is_eos(checkpoints, name):
    """Batched (padded with EOS) results equal one unpadded sequence at a time, though Qwen2's prompts
    start with that same id."""
    from clmap.evaluate.lm import generate, load_checkpoint, score_continuations

    lm = load_checkpoint(checkpoints[name])
    tok = lm.tokenizer
    assert tok.pad_id == tok.eos_id
    contexts = [[tok.bos_id, *tok.encode(t)] for t in ["a", "a much longer context here", "střední"]]
    continuations = [tok.encode(t) for t in ["x y z w", "b", "c d"]]
    scores = score_continuations(lm, contexts, continuations, batch_size=3)
    for (score, n), context, continuation in zip(scores, contexts, continuations, strict=True):
        assert n == len(continuation)
        assert score == pytest.approx(_unpadded_score(lm.model, context, continuation), abs=1e-4)
    expected = [tok.decode(_unpadded_greedy(lm.model, c, 4, tok.eos_id)).strip() for c in contexts]
    assert generate(lm, contexts, max_new_tokens=4, batch_size=3) == expected


@pytest.mark.parametrize("name", FAMILIES)
@torch.no_grad()
def test_packed_rows_attend_within_each_sequence(checkpoints, name):
    """Two sequences in one row with restarting position ids, no mask and no cache (how the objective
    calls the decoder): each gets the hidden states it gets alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints[name], attn_implementation="sdpa")
    tok = load_tokenizer(checkpoints[name])
    first, second = ([tok.bos_id, *tok.encode(t), tok.eos_id] for t in ("Dobrý den.", "Open the file."))
    packed = torch.tensor([first + second])
    positions = torch.tensor([[*range(len(first)), *range(len(second))]])
    hidden = model.get_decoder()(input_ids=packed, position_ids=positions, use_cache=False).last_hidden_state[
        0
    ]
    for ids, part in ((first, hidden[: len(first)]), (second, hidden[len(first) :])):
        alone = model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(part, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name", FAMILIES)
def test_the_objective_on_packed_rows_has_the_gradient_of_each_sequence_alone(
    checkpoints, training_setup, name, impl
):
    """clmap's own path on packed rows of this family (its attention inputs, the fused loss, pooled spans,
    the FSDP2 step) gives the gradient of the documented loss with every sequence run alone through
    transformers' own forward (tests/objective_oracle.py): a leak across packed sequences, a lost
    embedding scale or a wrong tied head shows here, for every family."""
    from objective_oracle import ORACLE, check_against_oracle, train_step_gradients

    from clmap.config import load_config
    from clmap.data.pipeline import load_texts, make_stream

    base, dist_info, _, table, _ = training_setup
    extra = {**ORACLE, "model.path": checkpoints[name], "model.attn_implementation": impl}
    overrides = tiny_overrides(base.data.corpus, "", base.run_dir, **extra)
    cfg = load_config(None, [*overrides, "--train.micro_batch=4"])
    tok = load_tokenizer(checkpoints[name])
    mono, parallel = load_texts(cfg, "train")
    stream = make_stream(cfg, tok, table, mono, parallel, seed=0)
    rows = [row for _, row in zip(range(cfg.train.global_batch), stream.rows(), strict=False)]
    assert sum(len(row.seq_lens) for row in rows) >= 2 * len(rows) and sum(len(r.pairs) for r in rows) >= 4
    initial, grads, grad_norm = train_step_gradients(cfg, dist_info, tok, table, rows)
    check_against_oracle(cfg, tok, table, rows, initial, grads, grad_norm)


@pytest.mark.parametrize("name", FAMILIES)
def test_fsdp_units_are_the_models_own_blocks(checkpoints, name):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints[name])
    units = fsdp_units(model)
    assert units == list(decoder_layers(model))
    assert {type(u).__name__ for u in units} == set(model._no_split_modules)


def test_fsdp_wrap_names_other_units_or_fails_clearly(checkpoints):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints["llama3"])
    mlps = fsdp_units(model, ["LlamaMLP"])
    assert [id(u) for u in mlps] == [id(layer.mlp) for layer in decoder_layers(model)]
    with pytest.raises(UnsupportedModelError, match=r"model.fsdp_wrap=\['LlamaBlock'\]: no module of these"):
        fsdp_units(model, ["LlamaBlock"])
    with pytest.raises(UnsupportedModelError, match="a unit holds the output layer"):
        fsdp_units(model, ["Linear"])


# -- unsupported models fail at start --------------------------------------------------------------
def _unsupported_configs():
    from transformers import Gemma2Config, GPT2Config, T5Config

    tiny = dict(vocab_size=256)
    return {
        "gpt2": (GPT2Config(n_embd=32, n_layer=2, n_head=2, **tiny), "has no .layers stack"),
        "t5": (
            T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, **tiny),
            "is an encoder-decoder model",
        ),
        "gemma2": (
            Gemma2Config(head_dim=16, **SIZES, **tiny),
            "config.final_logit_softcapping=30.0 transforms the logits after lm_head",
        ),
    }


@pytest.mark.parametrize("name", ["gpt2", "t5", "gemma2"])
def test_unsupported_model_is_named_with_the_rule_it_breaks(name):
    config, message = _unsupported_configs()[name]
    with pytest.raises(UnsupportedModelError, match=message):
        check_supported(config)


def test_unsupported_model_path_fails_at_start(small_tokenizer, tmp_path):
    """The model is checked before anything else is read: a missing corpus would be the next error."""
    from transformers import AutoModelForCausalLM

    config, _ = _unsupported_configs()["gpt2"]
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    assert type(load_model_config(tmp_path / "gpt2")).__name__ == "GPT2Config"
    extra = {"model.path": tmp_path / "gpt2"}
    proc = run_train(
        tiny_overrides(tmp_path / "nowhere", small_tokenizer, tmp_path / "run", **extra), check=False
    )
    assert proc.returncode == 2  # one line, no traceback (issue 23)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("clmap.train: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "GPT2LMHeadModel" in errors[0] and "has no .layers stack of decoder blocks" in errors[0]
    assert "nowhere" not in proc.stderr


# -- a clmap-trained SentencePiece tokenizer, exported for plain transformers ------------------------
def _dev_lines(lang: str, n: int = 1000) -> list[str]:
    """The first ``n`` non-empty lines of ``lang`` in the bundled dev split (parallel sides, then mono)."""
    lines = []
    for pair_dir in sorted((BUNDLED_CORPUS / "parallel").iterdir()):
        if lang in pair_dir.name.split("-"):
            with gzip.open(pair_dir / "dev.jsonl.gz", "rt", encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    side = "src" if record["src_lang"] == lang else "tgt"
                    lines += [t for t in record[side].split("\n") if t.strip()]
    with gzip.open(BUNDLED_CORPUS / "mono" / lang / "dev.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            lines += [t for t in json.loads(line)["text"].split("\n") if t.strip()]
    return lines[:n]


def _bundled_train_texts(langs=("en", "cs", "uk", "zh", "ja")) -> list[str]:
    texts = []
    for lang in langs:
        with gzip.open(BUNDLED_CORPUS / "mono" / lang / "train.jsonl.gz", "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


@pytest.fixture(scope="module")
def bundled_sentencepiece(tmp_path_factory) -> Path:
    """A SentencePiece model as clmap trains it, on the bundled train split of all five languages."""
    out = tmp_path_factory.mktemp("spm")
    train_sentencepiece(_bundled_train_texts(), out, ["en", "cs", "uk", "zh", "ja"], vocab_size=8000)
    return out


@pytest.mark.parametrize("lang", ["en", "cs", "uk", "zh", "ja"])
def test_sentencepiece_export_loads_with_plain_auto_tokenizer(bundled_sentencepiece, lang, tmp_path):
    from transformers import AutoTokenizer

    clmap_tok = load_tokenizer(bundled_sentencepiece)
    clmap_tok.save(tmp_path)  # what export_hf writes next to the model
    plain = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    lines = _dev_lines(lang)
    assert len(lines) == 1000
    encoded = plain(lines)["input_ids"]
    for line, ids in zip(lines, encoded, strict=True):
        assert ids == [clmap_tok.bos_id, *clmap_tok.encode(line)], line
    assert plain.decode(encoded[0], skip_special_tokens=True) == clmap_tok.decode(encoded[0]) == lines[0]
    assert plain.convert_tokens_to_ids(f"<2{lang}>") == clmap_tok.lang_tag(lang)[0]


EDGE_CASES = [
    " leading space",
    "double  space ",
    "\ttab and trailing newline\n",
    "<s> </s> <pad> <unk> <0x41> typed as text",
    "tag <2cs> inside",
    "▁already escaped",
    "rare 𠀋 and emoji 😀",
    "",
    " ",
]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_export_matches_on_edge_cases(bundled_sentencepiece, model_type, tmp_path):
    """Whitespace, special pieces typed as text, tags, byte fallback (Chinese through a Unigram model
    trained without it); a Unigram model converts too."""
    from transformers import AutoTokenizer

    if model_type == "bpe":
        clmap_tok = load_tokenizer(bundled_sentencepiece)
    else:
        clmap_tok = train_sentencepiece(
            _bundled_train_texts(["en", "cs"]), tmp_path / "spm", ["en", "cs"], 2000, model_type="unigram"
        )
    clmap_tok.save(tmp_path / "export")
    plain = AutoTokenizer.from_pretrained(tmp_path / "export", local_files_only=True)
    lines = EDGE_CASES + [line for lang in ["cs", "zh"] for line in _dev_lines(lang, 100)]
    for line in lines:
        assert plain(line)["input_ids"] == [clmap_tok.bos_id, *clmap_tok.encode(line)], repr(line)


def test_old_sentencepiece_export_still_loads(bundled_sentencepiece, tmp_path):
    """Exports made before tokenizer.json existed carry tokenizer.model and clmap's metadata only."""
    from clmap.evaluate.lm import resolve_checkpoint

    shutil.copy(bundled_sentencepiece / SPM_FILE, tmp_path / SPM_FILE)
    shutil.copy(bundled_sentencepiece / "clmap_tokenizer.json", tmp_path / "clmap_tokenizer.json")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_checkpoint(tmp_path) == (tmp_path, tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "sentencepiece" and tok.languages == ["en", "cs", "uk", "zh", "ja"]
    assert tok.encode("Dobrý den") == load_tokenizer(bundled_sentencepiece).encode("Dobrý den")
