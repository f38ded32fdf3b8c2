"""Prompt formats: every run is scored in the format it trained on (read from its config.json), a format
can be forced, and after a text template the candidates of translation choice and Belebele follow the
prompt with a space (the tokens a byte-level BPE or SentencePiece model sees in running text)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from evaluator_fixtures import (
    FIXTURE_TEXT,
    build_checkpoints,
    byte_level_tokenizer,
    read_report,
    write_run_config,
)

from clmap.data.tokenizer import load_tokenizer
from clmap.evaluate import clnlu, evaluate
from clmap.evaluate.lm import continuation_ids, load_checkpoint
from clmap.evaluate.mt import choose_prompt_format
from clmap.evaluate.sources import ParallelSegment

SEGMENTS = [
    ParallelSegment("d0", "Open the file.", "Otevřete soubor."),
    ParallelSegment("d0", "Select a cell.", "Vyberte buňku."),
    ParallelSegment("d0", "The sky is blue today.", "Nebe je dnes modré."),
    ParallelSegment("d0", "Click Save.", "Klepněte na Uložit."),
    ParallelSegment("d0", "The cat sleeps on the mat.", "Kočka spí na rohožce."),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return build_checkpoints(tmp_path_factory.mktemp("formats"))


# -- which format a run gets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), "mapping"),  # the full objective: tagged pairs trained
        (("--objective.lambda_map=0",), "mapping"),  # CL without L_map still trains the tags
        (("--data.cl_directions=forward",), "mapping"),
        (("--objective.lambda_cl=0",), "template"),  # NTP only: tags never trained
        (("--data.ntp_share=1.0",), "template"),  # no pair ever sampled
        (("--data.parallel_as_text=true",), "template"),  # pairs as text: no tags
    ],
)
def test_auto_format_follows_the_run_config(tmp_path, overrides, expected):
    run = tmp_path / "run"
    write_run_config(run, *overrides)
    (run / "hf").mkdir()
    (run / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for path in (run, run / "hf"):  # the run folder or its exported model: the same answer
        chosen = choose_prompt_format(path)
        assert chosen.name == expected
        assert "objective.lambda_cl=" in chosen.reason and str(run / "config.json") in chosen.reason


def test_base_model_gets_the_template_and_formats_can_be_forced(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    assert choose_prompt_format(base).name == "template"
    assert "not trained by clmap" in choose_prompt_format(base).reason
    forced = choose_prompt_format(base, "mapping")
    assert (forced.name, forced.reason) == ("mapping", "forced by --prompt-format mapping")
    assert choose_prompt_format(base, "auto", template="{src} ->").name == "template"
    with pytest.raises(ValueError, match="cannot be used with --prompt-format mapping"):
        choose_prompt_format(base, "mapping", template="{src} ->")
    with pytest.raises(ValueError, match="unknown"):
        choose_prompt_format(base, "tags")


# -- the candidates' tokens ------------------------------------------------------------------------


def test_template_candidates_carry_the_leading_space_with_a_byte_level_bpe(tmp_path):
    tok = byte_level_tokenizer(tmp_path / "bpe", FIXTURE_TEXT * 4)
    assert tok.kind == "hf"
    lm = SimpleNamespace(tokenizer=tok)
    items = clnlu.translation_choice_items(lm, SEGMENTS, "en", "cs", "template", seed=0)
    for item in items:
        for text, ids in zip(item.candidates, item.candidate_ids, strict=True):
            pieces = tok.backend.convert_ids_to_tokens(ids)
            assert pieces[0].startswith("Ġ"), pieces  # the space is part of the first piece, as in text
            assert ids == tok.encode(" " + text) != tok.encode(text)
            assert tok.decode(ids) == " " + text
    # the mapping format continues a language tag with the target encoded on its own, as trained
    mapped = clnlu.translation_choice_items(lm, SEGMENTS, "en", "cs", "mapping", seed=0)
    assert all(
        ids == tok.encode(text)
        for item in mapped
        for text, ids in zip(item.candidates, item.candidate_ids, strict=True)
    )


def test_template_candidates_with_sentencepiece_are_its_word_boundary_pieces(checkpoints):
    tok = load_tokenizer(checkpoints["run"] / "hf")
    assert tok.kind == "sentencepiece"
    for text in ("Otevřete soubor.", "Kočka spí"):
        ids = continuation_ids(tok, "English: Open the file.\nCzech:", text)
        assert ids == tok.encode(text)  # SentencePiece's dummy prefix is the space
        assert tok.backend.id_to_piece(ids[0]).startswith("▁")


def test_scorer_scores_the_candidate_tokens_per_candidate_byte(monkeypatch):
    seen = {}

    def fake_scores(lm, contexts, continuations, batch_size=8, desc=""):
        seen["contexts"], seen["continuations"] = list(contexts), list(continuations)
        return [(-float(len(c)), len(c)) for c in continuations]

    monkeypatch.setattr(clnlu, "score_continuations", fake_scores)
    item = clnlu.ChoiceItem(prompt=[1, 2], candidates=["ab", "čd"], gold=0, candidate_ids=[[7, 8, 9], [5]])
    scores = clnlu.model_scorer(SimpleNamespace(tokenizer=None))([item])
    assert seen["continuations"] == [[7, 8, 9], [5]] and seen["contexts"] == [[1, 2], [1, 2]]
    assert scores == [[-3 / 2, -1 / 3]]  # log p per UTF-8 byte of the text ("čd" is 3 bytes)


# -- the report says which format each task used ----------------------------------------------------


def _run(checkpoint: Path, out: Path, **kwargs) -> dict:
    evaluate(
        checkpoint,
        tasks=["mt", "clnlu"],
        pairs="en-cs",
        out_dir=out,
        limit=2,
        max_new_tokens=4,
        batch_size=4,
        **kwargs,
    )
    return read_report(out)


def test_report_records_the_format_of_each_task(checkpoints, tmp_path):
    cl_run = _run(checkpoints["run"], tmp_path / "cl")
    for task, name in (("mt", "mt"), ("clnlu", "choice")):
        prompt = cl_run["tasks"][task]["prompt"][name]
        assert prompt["format"] == "mapping" and "run trained tagged pairs" in prompt["reason"]
    assert cl_run["settings"]["prompt_format"] == "auto"
    assert cl_run["tasks"]["mt"]["details"]["en→cs"]["prompt"] == "clmap mapping format"

    ntp = tmp_path / "ntp_run"
    shutil.copytree(checkpoints["run"] / "hf", ntp / "hf")
    write_run_config(ntp, "--objective.lambda_cl=0")
    ntp_report = _run(ntp, tmp_path / "ntp")
    for task, name in (("mt", "mt"), ("clnlu", "choice")):
        prompt = ntp_report["tasks"][task]["prompt"][name]
        assert prompt["format"] == "template" and "never trained a language tag" in prompt["reason"]
        assert prompt["shots"] == "1-shot from bundled dev"
    markdown = (tmp_path / "ntp" / "report.md").read_text(encoding="utf-8")
    assert "Prompt (choice): template (run never trained a language tag" in markdown

    forced = _run(checkpoints["run"], tmp_path / "forced", prompt_format="template", few_shot=0)
    prompt = forced["tasks"]["clnlu"]["prompt"]["choice"]
    assert (prompt["format"], prompt["reason"], prompt["shots"]) == (
        "template",
        "forced by --prompt-format template",
        "0-shot",
    )
    assert forced["tasks"]["mt"]["details"]["en→cs"]["prompt"] == "text template, 0-shot"
    # the same items, two formats: translation choice scores differ only through the prompt
    assert (
        forced["tasks"]["clnlu"]["details"]["en→cs choice"]["n"]
        == cl_run["tasks"]["clnlu"]["details"]["en→cs choice"]["n"]
    )


def test_choice_candidates_after_the_template_go_through_continuation_ids(checkpoints, monkeypatch):
    lm = load_checkpoint(checkpoints["run"])
    calls = []
    real = clnlu.continuation_ids

    def spy(tok, context, text):
        calls.append((context, text))
        return real(tok, context, text)

    monkeypatch.setattr(clnlu, "continuation_ids", spy)
    shot = ParallelSegment("dev", "Good morning.", "Dobré ráno.")
    items = clnlu.translation_choice_items(lm, SEGMENTS, "en", "cs", "template", [shot], seed=0, n_items=2)
    assert len(calls) == 8 and all(context.endswith("\nCzech:") for context, _ in calls)
    # the same solved example as MT precedes each question
    assert all(context.startswith("English: Good morning.\nCzech: Dobré ráno.\n\n") for context, _ in calls)
    assert {text for _, text in calls} <= {s.tgt for s in SEGMENTS}
    assert all(item.prompt[0] == lm.tokenizer.bos_id for item in items)
    assert all(
        item.prompt[1:] == lm.tokenizer.encode(context)
        for item, (context, _) in zip(items, calls[::4], strict=True)
    )
