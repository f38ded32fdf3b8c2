"""Layer numbers mean the same thing everywhere: hidden_states[0] = embeddings, [i] = output of decoder
layer i, [L] = the last layer after the final norm (objective.map_layer, --lac-layer, the LAC curve);
and BERTScore-P uses bert-score's own tuned layer of its encoder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from evaluator_fixtures import build_checkpoints, read_report

from clmap.config import ObjectiveConfig
from clmap.data.examples import IGNORE_INDEX, GroupTable
from clmap.evaluate import clqa
from clmap.evaluate.__main__ import main
from clmap.evaluate.alignment import evaluate_alignment
from clmap.evaluate.lm import load_checkpoint, pooled_hidden_states
from clmap.evaluate.sources import EvalDataError, ParallelSegment
from clmap.objectives import MappingObjective, hidden_state_layer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return build_checkpoints(tmp_path_factory.mktemp("layers"))


def test_layer_convention_and_its_errors():
    assert [hidden_state_layer(k, 4, "x") for k in (-1, 0, 1, 4)] == [2, 0, 1, 4]
    for bad in (-2, 5):
        with pytest.raises(
            ValueError, match=rf"x={bad} is outside -1..4: 0 = embeddings, .*after the final norm"
        ):
            hidden_state_layer(bad, 4, "x")


@pytest.mark.parametrize("bad", [-2, 3])
def test_map_layer_out_of_range_is_refused(checkpoints, bad):
    lm = load_checkpoint(checkpoints["run"])
    with pytest.raises(ValueError, match=rf"objective.map_layer={bad} is outside -1..2"):
        MappingObjective(lm.model, GroupTable(["en", "cs"], ["en-cs"]), ObjectiveConfig(map_layer=bad))


def test_the_last_hidden_state_is_after_the_final_norm(checkpoints):
    lm = load_checkpoint(checkpoints["run"])
    decoder = lm.model.get_decoder()
    raw = {}
    hook = decoder.layers[-1].register_forward_hook(lambda m, i, o: raw.setdefault("out", o))
    ids = torch.tensor([[lm.tokenizer.bos_id, *lm.tokenizer.encode("The cat sleeps.")]])
    with torch.no_grad():
        out = decoder(input_ids=ids, output_hidden_states=True)
    hook.remove()
    last_layer = raw["out"][0] if isinstance(raw["out"], tuple) else raw["out"]
    assert len(out.hidden_states) == lm.num_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    torch.testing.assert_close(out.hidden_states[-1], decoder.norm(last_layer))
    assert not torch.allclose(out.hidden_states[-1], last_layer)


def test_map_layer_and_the_evaluator_pool_the_same_hidden_state(checkpoints):
    """The objective pools the source span of ``<bos> x <2b> y <eos>`` at map_layer; the evaluator pools
    ``<bos> x`` at the same index. Attention is causal, so the two agree at every layer, the last
    (after the final norm) included, only if both count layers the same way."""
    lm = load_checkpoint(checkpoints["run"])
    tok = lm.tokenizer
    x, y = "The cat sleeps on the mat.", "Kočka spí na rohožce."
    x_ids, y_ids = tok.encode(x), tok.encode(y)
    rows = [
        [tok.bos_id, *x_ids, *tok.lang_tag("cs"), *y_ids, tok.eos_id],
        [tok.bos_id, *y_ids, *tok.lang_tag("en"), *x_ids, tok.eos_id],
    ]
    width = max(map(len, rows))
    ids = torch.full((2, width), tok.pad_id, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
    # Each row is one sequence and its padding tail: the segments the packed attention keeps apart.
    segments = [n for row in rows for n in (len(row), width - len(row)) if n]
    cu_seq_lens = torch.tensor([0, *torch.tensor(segments).cumsum(0).tolist()], dtype=torch.int32)
    evaluator = pooled_hidden_states(lm, [x, y])
    table = GroupTable(["en", "cs"], ["en-cs"])
    for layer in range(lm.num_layers + 1):
        objective = MappingObjective(lm.model, table, ObjectiveConfig(map_layer=layer))
        with torch.no_grad():
            out = objective(
                ids,
                torch.arange(width).expand(2, width),
                cu_seq_lens,
                max(segments),
                torch.full_like(ids, IGNORE_INDEX),
                torch.zeros_like(ids),
                torch.tensor([1, width + 1]),
                torch.tensor([1 + len(x_ids), width + 1 + len(y_ids)]),
                torch.tensor([0]),
                torch.tensor([1]),
                return_pooled=True,
            )
        torch.testing.assert_close(out.pooled_a[0], evaluator[layer, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.pooled_b[0], evaluator[layer, 1], rtol=1e-4, atol=1e-5)


def test_lac_curve_labels_each_hidden_state(checkpoints, tmp_path):
    lm = load_checkpoint(checkpoints["run"])
    segments = [ParallelSegment("d", f"Sentence number {k}.", f"Věta číslo {k}.") for k in range(4)]
    aligned = evaluate_alignment(lm, "en-cs", segments, n_boot=10, layer=2)
    assert [row.label for row in aligned.layers] == ["embeddings", "layer 1", "layer 2 + final norm"]
    assert aligned.report_layer == 2
    out = tmp_path / "report"
    argv = ["--checkpoint", str(checkpoints["run"]), "--out", str(out), "--tasks", "lac", "--pairs", "en-cs"]
    assert main([*argv, "--limit", "4", "--n-boot", "10", "--lac-layer", "2"]) == 0
    report = read_report(out)
    assert [m["key"] for m in report["tasks"]["lac"]["metrics"]][0] == "en-cs (layer 2 + final norm)"
    rows = report["tasks"]["lac"]["details"]["en-cs"]["layers"]
    assert rows[-1]["label"] == "layer 2 + final norm" and rows[0]["label"] == "embeddings"


def test_lac_layer_out_of_range_fails_before_any_task(checkpoints, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoints["run"]), "--out", str(tmp_path), "--tasks", "mt,lac"]
    argv += ["--pairs", "en-cs", "--limit", "1", "--max-new-tokens", "2"]  # quick even if MT did run
    assert main([*argv, "--lac-layer", "3"]) == 2
    captured = capsys.readouterr()
    assert "--lac-layer=3 is outside -1..2: 0 = embeddings" in captured.err
    assert "[clmap.evaluate] mt" not in captured.err  # refused before MT ran


# -- BERTScore's layer -----------------------------------------------------------------------------


@pytest.fixture
def fake_bert_score(monkeypatch):
    """bert-score's interface (``score``, ``utils.model2layers``) recording the layer it is asked for."""
    calls = []
    package, utils = ModuleType("bert_score"), ModuleType("bert_score.utils")
    utils.model2layers = {"xlm-roberta-large": 17, "bert-base-multilingual-cased": 9}

    def score(cands, refs, model_type=None, num_layers=None, lang=None, device=None, verbose=False):
        calls.append({"model_type": model_type, "num_layers": num_layers, "n": len(cands)})
        value = torch.full((len(cands),), 0.5)
        return value, value, value

    package.score, package.utils = score, utils
    monkeypatch.setitem(sys.modules, "bert_score", package)
    monkeypatch.setitem(sys.modules, "bert_score.utils", utils)
    return calls


def _encoder(folder: Path, name_or_path: str | None, layers: int = 24) -> Path:
    folder.mkdir(parents=True)
    config = {"model_type": "xlm-roberta", "num_hidden_layers": layers}
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_bertscore_uses_bert_scores_tuned_layer(fake_bert_score, tmp_path):
    named = _encoder(tmp_path / "enc", "xlm-roberta-large")
    assert clqa.resolve_bertscore_layer(named) == (17, "bert-score's tuned layer for xlm-roberta-large")
    cached = _encoder(
        tmp_path / "hub" / "models--google-bert--bert-base-multilingual-cased" / "snapshots" / "a1", None
    )
    with pytest.raises(EvalDataError, match="no tuned layer .*pass --bertscore-layer N"):
        clqa.resolve_bertscore_layer(_encoder(tmp_path / "custom-encoder", "/home/me/custom-encoder"))
    assert clqa.resolve_bertscore_layer(cached)[0] == 9  # the hub cache folder names the model
    assert clqa.resolve_bertscore_layer(named, 5) == (5, "--bertscore-layer")
    with pytest.raises(EvalDataError, match="outside 0..24"):
        clqa.resolve_bertscore_layer(named, 25)
    precision, note = clqa.bertscore_precision(["a"], ["b"], str(named), "en", num_layers=None)
    assert (precision, note) == (0.5, None) and fake_bert_score[-1]["num_layers"] == 17


def test_clqa_report_records_the_bertscore_layer(checkpoints, fake_bert_score, tmp_path):
    xquad = tmp_path / "xquad"
    xquad.mkdir()
    for lang, question in (("en", "Where does the cat sleep?"), ("cs", "Kde spí kočka?")):
        qa = {"answers": [{"answer_start": 0, "text": "mat"}], "question": question, "id": "q1"}
        payload = {
            "data": [{"title": "t", "paragraphs": [{"context": "The mat.", "qas": [qa]}]}],
            "version": "1.1",
        }
        (xquad / f"xquad.{lang}.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    encoder = _encoder(tmp_path / "xlm-roberta-large", None)
    out = tmp_path / "report"
    argv = ["--checkpoint", str(checkpoints["run"]), "--out", str(out), "--tasks", "clqa", "--pairs", "en-cs"]
    argv += ["--data", f"clqa={xquad}", "--bertscore-model", str(encoder), "--max-new-tokens", "3"]
    assert main(argv) == 0
    result = read_report(out)["tasks"]["clqa"]
    assert result["bertscore"] == {
        "model": str(encoder),
        "layer": 17,
        "why": "bert-score's tuned layer for xlm-roberta-large",
    }
    assert {c["num_layers"] for c in fake_bert_score} == {17}
    assert any(m["metric"] == "bertscore_p" for m in result["metrics"])
