"""The evaluator on tiny random Llama checkpoints: hand-computed perplexity, padding invariance, the CLI
end to end, the comparison mode and every bad-input error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from evaluator_fixtures import build_checkpoints

from clmap.evaluate.__main__ import main
from clmap.evaluate.bootstrap import MIN_DOCUMENTS
from clmap.evaluate.clnlu import belebele_items
from clmap.evaluate.clqa import clqa_items
from clmap.evaluate.lm import (
    CheckpointError,
    generate,
    load_checkpoint,
    resolve_checkpoint,
    score_continuations,
)
from clmap.evaluate.mt import evaluate_mt
from clmap.evaluate.perplexity import evaluate_perplexity
from clmap.evaluate.sources import EvalDataError, ParallelSegment


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return build_checkpoints(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def task_data(checkpoints) -> dict[str, Path]:
    """Tiny Belebele / XQuAD / CrossSum / FLORES fixtures for en-cs."""
    root = checkpoints["root"] / "data"
    belebele, xquad, flores = root / "belebele", root / "xquad", root / "flores"
    for folder in (belebele, xquad, flores):
        folder.mkdir(parents=True)
    questions = {
        "en": [
            ("Where does the cat sleep?", ["on the mat", "in the car", "at school", "on the roof"], 1),
            ("What colour is the sky?", ["green", "blue", "red", "black"], 2),
        ],
        "cs": [
            ("Kde spí kočka?", ["na rohožce", "v autě", "ve škole", "na střeše"], 1),
            ("Jakou barvu má nebe?", ["zelenou", "modrou", "červenou", "černou"], 2),
        ],
    }
    passages = {
        "en": ["The cat sleeps on the mat.", "The sky is blue today."],
        "cs": ["Kočka spí na rohožce.", "Nebe je dnes modré."],
    }
    for lang, code in (("en", "eng_Latn"), ("cs", "ces_Latn")):
        rows = []
        for k, ((question, options, answer), passage) in enumerate(
            zip(questions[lang], passages[lang], strict=True)
        ):
            row = {
                "link": f"l{k}",
                "question_number": 1,
                "flores_passage": passage,
                "question": question,
                "correct_answer_num": str(answer),
            }
            row.update({f"mc_answer{i + 1}": option for i, option in enumerate(options)})
            rows.append(json.dumps(row, ensure_ascii=False))
        (belebele / f"{code}.jsonl").write_text("\n".join(reversed(rows)) + "\n", encoding="utf-8")
        squad = {
            "data": [
                {
                    "paragraphs": [
                        {
                            "context": passages[lang][k],
                            "qas": [
                                {
                                    "id": f"q{k}",
                                    "question": questions[lang][k][0],
                                    "answers": [{"text": questions[lang][k][1][0], "answer_start": 0}],
                                }
                            ],
                        }
                        for k in range(2)
                    ]
                }
            ]
        }
        (xquad / f"xquad.{lang}.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
        (flores / f"{code}.devtest").write_text("\n".join(passages[lang]) + "\n", encoding="utf-8")
    crosssum = root / "crosssum"
    crosssum.mkdir()
    (crosssum / "en-cs.jsonl").write_text(
        "\n".join(
            json.dumps({"text": p, "summary": c}, ensure_ascii=False)
            for p, c in zip(passages["en"], passages["cs"], strict=True)
        )
        + "\n",
        encoding="utf-8",
    )
    return {"clnlu": belebele, "clqa": xquad, "clsum": crosssum, "mt": flores}


# -- shared scoring ---------------------------------------------------------------------------------


def test_perplexity_equals_exp_mean_nll_by_hand(checkpoints):
    lm = load_checkpoint(checkpoints["run"])
    texts = ["The cat sleeps on the mat.", "Kočka spí na rohožce a sní.", "猫が寝る。"]
    result = evaluate_perplexity(lm, texts, batch_size=2)
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[lm.tokenizer.bos_id] + lm.tokenizer.encode(text)])
            loss = lm.model(input_ids=ids, labels=ids).loss  # mean NLL over the tokens after bos
            total_nll += float(loss) * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
    assert result["tokens"] == total_tokens
    assert result["ppl"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-4)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert result["bits_per_byte"] == pytest.approx(total_nll / (math.log(2) * n_bytes), rel=1e-4)


def test_scoring_and_generation_do_not_depend_on_padding(checkpoints):
    lm = load_checkpoint(checkpoints["run"])
    tok = lm.tokenizer
    contexts = [[tok.bos_id] + tok.encode(t) for t in ["a", "a longer context here", "střední"]]
    continuations = [tok.encode(t) for t in ["x y z w", "b", "c d"]]
    batched = score_continuations(lm, contexts, continuations, batch_size=3)
    single = score_continuations(lm, contexts, continuations, batch_size=1)
    for (a, n), (b, m) in zip(batched, single, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-4)
    assert generate(lm, contexts, max_new_tokens=5, batch_size=3) == generate(lm, contexts, 5, batch_size=1)


def test_empty_generations_are_counted(checkpoints):
    lm = load_checkpoint(checkpoints["run"])
    with torch.no_grad():
        lm.model.lm_head.weight.zero_()  # all logits equal: greedy picks id 0 (pad), which decodes to ""
    segments = [ParallelSegment("d", "Hello.", "Ahoj."), ParallelSegment("d", "Thanks.", "Díky.")]
    scores = evaluate_mt(lm, "en", "cs", segments, max_new_tokens=3)
    assert scores["empty_generations"] == 2 and scores["bleu"] == 0.0


# -- CLI ------------------------------------------------------------------------------------------


def _common(limit: int = 3) -> list[str]:
    return [
        "--limit",
        str(limit),
        "--pairs",
        "en-cs",
        "--n-boot",
        "50",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "4",
    ]


def test_cli_end_to_end(checkpoints, task_data, tmp_path, capsys):
    out = tmp_path / "report"
    data = [arg for key in ("clnlu", "clqa", "clsum") for arg in ("--data", f"{key}={task_data[key]}")]
    assert main(["--checkpoint", str(checkpoints["run"]), "--out", str(out), *_common(), *data]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["tasks"]) == {"mt", "clnlu", "clqa", "clsum", "ppl", "lac"}
    metrics = {(t, m["key"], m["metric"]): m for t, r in report["tasks"].items() for m in r["metrics"]}
    assert ("mt", "en→cs", "bleu") in metrics and ("mt", "cs→en", "chrf++") in metrics
    assert metrics["clnlu", "belebele P:en Q:cs", "accuracy"]["n"] == 2
    assert metrics["clnlu", "en→cs choice", "accuracy"]["n"] == 3
    assert ("clqa", "C:en Q:cs", "f1") in metrics and not any(k[2] == "bertscore_p" for k in metrics)
    assert any("BERTScore omitted" in note for note in report["tasks"]["clqa"]["notes"])
    assert ("clsum", "en→cs", "rougeL") in metrics
    assert metrics["ppl", "cs", "ppl"]["value"] > 1
    lac = report["tasks"]["lac"]["details"]["en-cs"]
    assert len(lac["layers"]) == 3  # embeddings + 2 decoder layers
    # 3 items from fewer than MIN_DOCUMENTS documents: no interval anywhere, and the report says so
    assert lac["documents"] < MIN_DOCUMENTS and all(row["lac_lo"] is None for row in lac["layers"])
    assert lac["floor_layer"] == 0 and lac["map_layer"] == 1  # the run's objective.map_layer (-1: middle)
    best = max(row["lac"] for row in lac["layers"])
    views = {name: metrics["lac", "en-cs", f"lac@{name}"]["value"] for name in ("floor", "map", "best")}
    assert views == {"floor": lac["layers"][0]["lac"], "map": lac["layers"][1]["lac"], "best": best}
    lift = metrics["lac", "en-cs", "lac@map-floor"]
    assert lift["value"] == pytest.approx(views["map"] - views["floor"]) and lift["ci"] is None
    # items: recorded by id, the same ones for MT, choice and LAC of a pair
    choice = metrics["clnlu", "en→cs choice", "accuracy"]
    assert choice["items"]["ids"] == metrics["mt", "en→cs", "chrf++"]["items"]["ids"] == lac["item_ids"]
    assert report["tasks"]["mt"]["details"]["cs→en"]["item_ids"] == lac["item_ids"]
    assert report["settings"]["items"] == "sample"
    ppl = report["tasks"]["ppl"]["details"]["cs"]
    assert len(ppl["item_ids"]) == 3 and ppl["documents"] == metrics["ppl", "cs", "ppl"]["documents"]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "too few documents for an interval" in markdown
    for title in ("Machine translation", "Language alignment", "Perplexity per language", "Cross-lingual QA"):
        assert f"## {title}" in markdown
    for plot in ("lac_per_layer.png", "similarity_en-cs.png", "perplexity.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert "Machine translation" in capsys.readouterr().out


def test_a_task_limit_sets_that_task_s_items_and_the_rest_keep_limit(checkpoints, tmp_path):
    """``--task-limit mt=2,ppl=4`` beside ``--limit 3``: MT scores 2 items, perplexity 4, choice and LAC
    the 3 of ``--limit`` (MT's generation costs more than scoring, so the ablation gives it fewer)."""
    out = tmp_path / "limits"
    argv = ["--checkpoint", str(checkpoints["run"]), "--out", str(out), "--tasks", "mt,clnlu,ppl,lac"]
    assert main([*argv, *_common(3), "--task-limit", "mt=2", "--task-limit", "ppl=4,clnlu=3"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["limit"] == 3 and report["settings"]["task_limit"] == {
        "mt": 2,
        "ppl": 4,
        "clnlu": 3,
    }
    tasks = report["tasks"]
    assert [len(tasks["mt"]["details"][d]["item_ids"]) for d in ("en→cs", "cs→en")] == [2, 2]
    assert len(tasks["ppl"]["details"]["cs"]["item_ids"]) == 4
    assert len(tasks["lac"]["details"]["en-cs"]["item_ids"]) == 3
    assert tasks["clnlu"]["details"]["en→cs choice"]["n"] == 3


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("bogus=3", "--task-limit: bogus=3 not of the form TASK=N with a task of mt, clnlu"),
        ("mt=0", "--task-limit: mt=0 not of the form TASK=N"),
        ("mt", "--task-limit 'mt': expected TASK=N"),
        ("mt=x", "--task-limit['mt']: expected int, got 'x'"),
    ],
)
def test_a_bad_task_limit_is_one_line_before_any_model_work(given, expected, tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path / "absent"), "--out", str(tmp_path / "o"), "--task-limit", given]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_cli_mt_from_a_flores_folder_with_a_plain_hf_model(checkpoints, task_data, tmp_path):
    out = tmp_path / "mt"
    argv = [
        "--checkpoint",
        str(checkpoints["plain"]),
        "--out",
        str(out),
        "--tasks",
        "mt",
        "--data",
        f"mt={task_data['mt']}",
        *_common(),
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["tasks"]["mt"]["details"]["en→cs"]["n"] == 2
    assert report["tasks"]["mt"]["details"]["en→cs"]["prompt"] == "text template, 1-shot"


def test_cli_compare(checkpoints, tmp_path):
    first = tmp_path / "first"
    argv = ["--tasks", "ppl,lac", *_common(3)]
    assert main(["--checkpoint", str(checkpoints["run"]), "--out", str(first), *argv]) == 0
    out = tmp_path / "cmp"
    assert main(["--compare", str(first), str(checkpoints["plain"]), "--out", str(out), *argv]) == 0
    comparison = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert comparison["baseline"] == "0:first" and len(comparison["runs"]) == 2
    base = json.loads((first / "report.json").read_text(encoding="utf-8"))
    other = json.loads((out / "run1_plain" / "report.json").read_text(encoding="utf-8"))
    rows = [r for r in comparison["rows"] if r["task"] == "lac" and r["metric"] == "lac"]
    assert rows
    for row in rows:  # the flag and the delta are those of the two reports' own numbers
        mine = next(
            m for m in base["tasks"]["lac"]["metrics"] if (m["key"], m["metric"]) == (row["key"], "lac")
        )
        theirs = next(
            m for m in other["tasks"]["lac"]["metrics"] if (m["key"], m["metric"]) == (row["key"], "lac")
        )
        assert mine["ci"] is None and row["outside_ci"]["1:plain"] is None  # 3 items: too few documents
        assert row["deltas"]["1:plain"] == pytest.approx(theirs["value"] - mine["value"])
        paired = row["paired"]["1:plain"]  # the same 3 items in both runs, too few documents to resample
        assert paired["items"] == 3 and paired["lo"] is None
        assert paired["delta"] == pytest.approx(row["deltas"]["1:plain"])
    text = (out / "comparison.md").read_text(encoding="utf-8")
    assert "Δ 1:plain" in text and "paired bootstrap" in text and "too few documents" in text
    for task in ("ppl", "lac"):
        assert (out / f"compare_{task}.png").is_file()
    assert (out / "run1_plain" / "report.json").is_file()


# -- bad input ------------------------------------------------------------------------------------


def test_belebele_missing_field_names_file_record_and_field(checkpoints, task_data, tmp_path):
    lm = load_checkpoint(checkpoints["run"])
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("eng_Latn.jsonl", "ces_Latn.jsonl"):
        (folder / name).write_text((task_data["clnlu"] / name).read_text(encoding="utf-8"), encoding="utf-8")
    lines = (folder / "ces_Latn.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    del record["mc_answer3"]
    lines[1] = json.dumps(record)
    (folder / "ces_Latn.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"ces_Latn\.jsonl: record 2 has no field 'mc_answer3'"):
        belebele_items(lm, folder, "en", "cs")


def test_xquad_missing_field_names_file_record_and_field(task_data, tmp_path):
    payload = json.loads((task_data["clqa"] / "xquad.cs.json").read_text(encoding="utf-8"))
    del payload["data"][0]["paragraphs"][1]["qas"][0]["question"]
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "xquad.cs.json").write_text(json.dumps(payload), encoding="utf-8")
    (folder / "xquad.en.json").write_text((task_data["clqa"] / "xquad.en.json").read_text(encoding="utf-8"))
    with pytest.raises(EvalDataError, match=r"xquad\.cs\.json: record 2 has no field 'question'"):
        clqa_items(folder, "en", "cs")


def test_language_without_data_is_a_clear_cli_error(checkpoints, tmp_path, capsys):
    argv = [
        "--checkpoint",
        str(checkpoints["run"]),
        "--out",
        str(tmp_path),
        "--tasks",
        "ppl",
        "--pairs",
        "en-de",
    ]
    assert main(argv) == 2
    assert "no bundled monolingual data for language(s) de" in capsys.readouterr().err
    argv[argv.index("ppl")] = "lac"
    assert main(argv) == 2
    assert "no bundled parallel data for en-de" in capsys.readouterr().err


def test_belebele_language_without_a_file(checkpoints, task_data):
    lm = load_checkpoint(checkpoints["run"])
    with pytest.raises(EvalDataError, match="no file for language 'uk'"):
        belebele_items(lm, task_data["clnlu"], "en", "uk")


def test_checkpoint_without_tokenizer(checkpoints, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((checkpoints["plain"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        resolve_checkpoint(bare)
    assert main(["--checkpoint", str(bare), "--out", str(tmp_path / "o")]) == 2
    assert "no tokenizer found" in capsys.readouterr().err
