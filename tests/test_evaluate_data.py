"""Evaluation on the user's data: miniature copies of the real downloads (file names, folder layout and
record fields exactly as released) of FLORES-200, FLORES+ and flores_plus, Belebele, XQuAD, MLQA and
CrossSum; ``--data mt|choice|lac=PATH`` with a pair the bundled corpus lacks; and several bundled
splits (in-domain ``test`` beside an ``ood`` split) in one report."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from evaluator_fixtures import build_checkpoints, metrics_of, read_report

from clmap import BUNDLED_CORPUS
from clmap.evaluate import evaluate
from clmap.evaluate.__main__ import main
from clmap.evaluate.clnlu import belebele_items
from clmap.evaluate.clqa import clqa_items
from clmap.evaluate.clsum import crosssum_records
from clmap.evaluate.lm import load_checkpoint
from clmap.evaluate.sources import EvalDataError, parallel_segments

# Parallel sentences of the three FLORES layouts: devtest is scored, dev gives the few-shot examples.
DEVTEST = {
    "en": [
        "The cat sleeps on the mat.",
        "Open the file.",
        "Select a cell.",
        "The sky is blue.",
        "Click Save.",
    ],
    "de": [
        "Die Katze schläft.",
        "Öffnen Sie die Datei.",
        "Wählen Sie eine Zelle.",
        "Der Himmel ist blau.",
        "Klicken Sie auf Speichern.",
    ],
    "cs": ["Kočka spí.", "Otevřete soubor.", "Vyberte buňku.", "Nebe je modré.", "Klepněte na Uložit."],
}
DEV = {
    "en": ["Good morning.", "Thank you."],
    "de": ["Guten Morgen.", "Danke."],
    "cs": ["Dobré ráno.", "Děkuji."],
}
FLORES = {"en": "eng_Latn", "de": "deu_Latn", "cs": "ces_Latn"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return build_checkpoints(tmp_path_factory.mktemp("data"))


def _lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("downloads")
    # FLORES-200 (flores200_dataset.tar.gz): {dev,devtest}/{code}.{split} and metadata files at the root
    flores200 = root / "flores200_dataset"
    for lang, code in FLORES.items():
        _lines(flores200 / "dev" / f"{code}.dev", DEV[lang])
        _lines(flores200 / "devtest" / f"{code}.devtest", DEVTEST[lang])
    for split in ("dev", "devtest"):
        _lines(flores200 / f"metadata_{split}.tsv", ["URL\tdomain\ttopic\thas_image\thas_hyperlink"])
    # FLORES+ releases (floresp-v2.0-rc.3.zip): {dev,devtest}/{split}.{code}
    floresp = root / "floresp-v2.0-rc.3"
    for lang, code in FLORES.items():
        _lines(floresp / "dev" / f"dev.{code}", DEV[lang])
        _lines(floresp / "devtest" / f"devtest.{code}", DEVTEST[lang])
    # flores_plus on the Hugging Face hub: {dev,devtest}/{code}.parquet, one row per sentence
    flores_plus = root / "flores_plus"
    for lang, code in FLORES.items():
        for split, texts in (("dev", DEV[lang]), ("devtest", DEVTEST[lang])):
            iso, script = code.split("_")
            table = pa.table(
                {
                    "id": list(range(len(texts))),
                    "iso_639_3": [iso] * len(texts),
                    "iso_15924": [script] * len(texts),
                    "glottocode": ["stan1293"] * len(texts),
                    "text": texts,
                    "url": [f"https://en.wikinews.org/wiki/{i}" for i in range(len(texts))],
                    "domain": ["wikinews"] * len(texts),
                    "topic": ["science"] * len(texts),
                    "has_image": [0] * len(texts),
                    "has_hyperlink": [0] * len(texts),
                    "last_updated": ["2.0"] * len(texts),
                }
            )
            (flores_plus / split).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, flores_plus / split / f"{code}.parquet")
    # Belebele (dataset repository): data/{code}.jsonl; one passage can carry two questions
    belebele = root / "belebele"
    passages = {
        "en": ["The cat sleeps on the mat all day.", "The sky is blue today."],
        "cs": ["Kočka spí celý den na rohožce.", "Nebe je dnes modré."],
    }
    questions = {
        "en": [("Where does the cat sleep?", ["On the mat", "In the car", "At school", "On the roof"], 1)],
        "cs": [("Kde spí kočka?", ["Na rohožce", "V autě", "Ve škole", "Na střeše"], 1)],
    }
    for lang in ("en", "cs"):
        rows = []
        for k, passage in enumerate(passages[lang]):
            for number in (1, 2):
                question, options, answer = questions[lang][0]
                rows.append(
                    {
                        "link": f"https://en.wikibooks.org/wiki/Page_{k}",
                        "question_number": number,
                        "flores_passage": passage,
                        "question": question,
                        "mc_answer1": options[0],
                        "mc_answer2": options[1],
                        "mc_answer3": options[2],
                        "mc_answer4": options[3],
                        "correct_answer_num": str(answer),
                        "dialect": FLORES[lang],
                        "ds": "2023-05-03",
                    }
                )
        _lines(belebele / "data" / f"{FLORES[lang]}.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    # XQuAD: xquad.{lang}.json (SQuAD v1.1); MLQA: MLQA_V1/{dev,test}/{split}-context-{c}-question-{q}.json
    contexts = {"en": "The cat sleeps on the mat.", "de": "Die Katze schläft auf der Matte."}
    asked = {"en": "Where does the cat sleep?", "de": "Wo schläft die Katze?"}
    answers = {"en": "on the mat", "de": "auf der Matte"}

    def squad(context_lang: str, question_lang: str) -> dict:
        qa = {
            "answers": [{"answer_start": 15, "text": answers[context_lang]}],
            "question": asked[question_lang],
            "id": "56beb4343aeaaa14008c925b",
        }
        paragraph = {"context": contexts[context_lang], "qas": [qa]}
        return {"data": [{"title": "Cat", "paragraphs": [paragraph]}], "version": "1.1"}

    xquad = root / "xquad"
    xquad.mkdir()
    for lang in ("en", "de"):
        (xquad / f"xquad.{lang}.json").write_text(json.dumps(squad(lang, lang), ensure_ascii=False))
    mlqa = root / "MLQA_V1"
    for split in ("dev", "test"):
        (mlqa / split).mkdir(parents=True)
        for c, q in (("en", "de"), ("de", "en"), ("en", "en")):
            (mlqa / split / f"{split}-context-{c}-question-{q}.json").write_text(json.dumps(squad(c, q)))
    # CrossSum (release tar): {source}-{target}_{split}.jsonl with English language names
    crosssum = root / "CrossSum"
    for split in ("train", "val", "test"):
        record = {
            "source_url": "https://www.bbc.com/news/1",
            "target_url": "https://www.bbc.com/japanese/1",
            "summary": "猫がマットの上で寝ています。",
            "text": f"The cat sleeps on the mat ({split}). It sleeps all day.",
        }
        _lines(crosssum / f"english-japanese_{split}.jsonl", [json.dumps(record, ensure_ascii=False)])
    return {
        "flores200": flores200,
        "floresp": floresp,
        "flores_plus": flores_plus,
        "belebele": belebele,
        "xquad": xquad,
        "mlqa": mlqa,
        "crosssum": crosssum,
    }


# -- readers on the real layouts -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flores200", "floresp", "flores_plus"])
def test_flores_downloads_read_devtest_from_the_root_or_the_split_folder(downloads, layout):
    for path in (downloads[layout], downloads[layout] / "devtest"):
        segments = parallel_segments("en", "de", path=path)
        assert [(s.src, s.tgt) for s in segments] == list(zip(DEVTEST["en"], DEVTEST["de"], strict=True))
    dev = parallel_segments("de", "cs", path=downloads[layout] / "dev")
    assert [(s.src, s.tgt) for s in dev] == list(zip(DEV["de"], DEV["cs"], strict=True))


def test_flores_plus_rows_must_share_ids(downloads, tmp_path):
    folder = tmp_path / "devtest"
    shutil.copytree(downloads["flores_plus"] / "devtest", folder)
    table = pq.read_table(folder / "deu_Latn.parquet")
    pq.write_table(table.set_column(0, "id", pa.array([0, 1, 3, 2, 4])), folder / "deu_Latn.parquet")
    with pytest.raises(EvalDataError, match=r"deu_Latn.parquet, row 3 has id '3'"):
        parallel_segments("en", "de", path=folder)


def test_belebele_repository_layout(checkpoints, downloads):
    lm = load_checkpoint(checkpoints["run"])
    items = belebele_items(lm, downloads["belebele"], "cs", "en")
    assert len(items) == 4 and all(item.gold == 0 for item in items)
    assert items[0].candidates == ["On the mat", "In the car", "At school", "On the roof"]
    prompt = lm.tokenizer.decode(items[2].prompt)
    assert "Nebe je dnes modré." in prompt and "Where does the cat sleep?" in prompt


def test_belebele_items_are_sampled_over_passages_and_carry_ids(checkpoints, downloads):
    lm = load_checkpoint(checkpoints["run"])
    every = belebele_items(lm, downloads["belebele"], "cs", "en")
    link = "https://en.wikibooks.org/wiki/Page_{}"
    assert [(i.doc, i.id) for i in every] == [
        (link.format(k), f"{link.format(k)}#{q}") for k in (0, 1) for q in (1, 2)
    ]
    pairs = [("cs", "en"), ("en", "cs")]
    drawn = belebele_items(lm, downloads["belebele"], "cs", "en", limit=2, items="sample", seed=0)
    assert sorted(i.doc for i in drawn) == [link.format(0), link.format(1)]  # one question per passage
    picks = {}
    for seed in range(8):  # the same questions for every pair and run given the seed; seeds differ
        ids = [
            [i.id for i in belebele_items(lm, downloads["belebele"], p, q, 2, "sample", seed)]
            for p, q in pairs
        ]
        assert ids[0] == ids[1]
        picks[seed] = tuple(ids[0])
    assert len(set(picks.values())) > 1
    first = belebele_items(lm, downloads["belebele"], "cs", "en", limit=2, items="first")
    assert [i.id for i in first] == [i.id for i in every[:2]]


def test_belebele_files_in_different_orders_with_ambiguous_keys_are_refused(checkpoints, downloads, tmp_path):
    lm = load_checkpoint(checkpoints["run"])
    folder = tmp_path / "belebele"
    shutil.copytree(downloads["belebele"], folder)
    english = folder / "data" / "eng_Latn.jsonl"
    rows = english.read_text(encoding="utf-8").splitlines()
    # same links twice (a passage of FLORES dev and devtest), listed in another order than in Czech
    duplicated = [json.loads(r) for r in rows]
    for r in duplicated:
        r["link"] = "https://en.wikibooks.org/wiki/Same"
    english.write_text("\n".join(json.dumps(r) for r in reversed(duplicated)) + "\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match="different orders"):
        belebele_items(lm, folder, "en", "cs")
    # unique keys in another order are joined by key
    for k, r in enumerate(duplicated):
        r["link"] = f"https://en.wikibooks.org/wiki/Page_{k // 2}"
    english.write_text("\n".join(json.dumps(r) for r in reversed(duplicated)) + "\n", encoding="utf-8")
    items = belebele_items(lm, folder, "en", "cs")
    assert "The sky is blue today." in lm.tokenizer.decode(items[2].prompt)


def test_xquad_and_mlqa_layouts(downloads):
    (item,) = clqa_items(downloads["xquad"], "en", "de")
    assert (item.context, item.question, item.answers) == (
        "The cat sleeps on the mat.",
        "Wo schläft die Katze?",
        ["on the mat"],
    )
    (item,) = clqa_items(downloads["mlqa"], "de", "en")  # MLQA's own cross-lingual test file
    assert (item.context, item.question, item.answers) == (
        "Die Katze schläft auf der Matte.",
        "Where does the cat sleep?",
        ["auf der Matte"],
    )
    with pytest.raises(EvalDataError, match="no file for language 'cs'"):
        clqa_items(downloads["xquad"], "en", "cs")


def test_crosssum_release_layout(downloads):
    (record,) = crosssum_records(downloads["crosssum"], "en", "ja")
    assert record["text"].endswith("(test). It sleeps all day.") and record["summary"].startswith("猫")
    with pytest.raises(EvalDataError, match="english-czech_test.jsonl"):
        crosssum_records(downloads["crosssum"], "en", "cs")


# -- --data for every parallel task, any pair ------------------------------------------------------


def test_user_parallel_data_for_a_pair_the_bundled_corpus_lacks(checkpoints, downloads, tmp_path):
    out = tmp_path / "report"
    argv = [
        "--checkpoint",
        str(checkpoints["plain"]),
        "--out",
        str(out),
        "--tasks",
        "mt,clnlu,lac",
        "--pairs",
        "en-de",
        "--data",
        f"mt={downloads['flores200']}",
        "--data",
        f"choice={downloads['flores_plus']}",
        "--data",
        f"lac={downloads['floresp'] / 'devtest'}",
        "--max-new-tokens",
        "4",
        "--n-boot",
        "20",
    ]
    assert main(argv) == 0
    report = read_report(out)
    data = {task: report["tasks"][task]["data"] for task in ("mt", "clnlu", "lac")}
    assert data == {  # a download's root is scored on its devtest folder, and the report says so
        "mt": {"mt": str(downloads["flores200"] / "devtest")},
        "clnlu": {"choice": str(downloads["flores_plus"] / "devtest")},
        "lac": {"lac": str(downloads["floresp"] / "devtest")},
    }
    metrics = metrics_of(report)
    assert metrics["mt", "de→en", "chrf++"]["n"] == 5 and metrics["mt", "en→de", "bleu"]["split"] is None
    assert metrics["clnlu", "en→de choice", "accuracy"]["n"] == 5
    assert report["tasks"]["lac"]["details"]["en-de"]["n"] == 5
    # the base model gets the template with its examples from the download's dev folder, never devtest
    shots = report["tasks"]["mt"]["prompt"]["mt"]["shots"]
    assert shots == f"1-shot from {downloads['flores200'] / 'dev'}"
    assert (
        report["tasks"]["clnlu"]["prompt"]["choice"]["shots"]
        == f"1-shot from {downloads['flores_plus'] / 'dev'}"
    )
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert f"Data: choice = {downloads['flores_plus'] / 'devtest'}" in markdown


def test_bundled_pairs_are_still_checked_for_tasks_without_data(checkpoints, downloads, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoints["plain"]), "--out", str(tmp_path), "--tasks", "mt,lac"]
    argv += ["--pairs", "en-de", "--data", f"mt={downloads['flores200']}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no bundled parallel data for en-de" in err and "--data lac=PATH" in err


# -- in-domain and out-of-domain side by side ------------------------------------------------------


def _head(src: Path, dst: Path, n: int, transform=None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(n), f, strict=False)]
    with gzip.open(dst, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(transform(record) if transform else record, ensure_ascii=False) + "\n")


@pytest.fixture
def corpus_with_ood(tmp_path, monkeypatch) -> Path:
    """The bundled corpus' first records, plus an ood split for en-cs only (cs-uk has none)."""
    root = tmp_path / "corpus"
    for pair in ("en-cs", "cs-uk"):
        for split in ("dev", "test"):
            _head(
                BUNDLED_CORPUS / "parallel" / pair / f"{split}.jsonl.gz",
                root / "parallel" / pair / f"{split}.jsonl.gz",
                8,
            )
    ood = [
        ("Package for reading PDF files.", "Balíček pro čtení souborů PDF."),
        ("Library of mathematical functions.", "Knihovna matematických funkcí."),
        ("Command-line tool for archives.", "Nástroj příkazové řádky pro archivy."),
        ("Fonts for the Latin script.", "Písma pro latinku."),
        ("Documentation of the package.", "Dokumentace balíčku."),
    ]
    with gzip.open(root / "parallel" / "en-cs" / "ood.jsonl.gz", "wt", encoding="utf-8") as f:
        for k, (en, cs) in enumerate(ood):
            record = {"doc": f"debian/{k}", "src_lang": "en", "tgt_lang": "cs", "src": en, "tgt": cs}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    for lang in ("en", "cs", "uk"):
        _head(BUNDLED_CORPUS / "mono" / lang / "test.jsonl.gz", root / "mono" / lang / "test.jsonl.gz", 3)
    monkeypatch.setattr("clmap.data.readers.BUNDLED_CORPUS", root)
    return root


def test_in_and_out_of_domain_side_by_side(checkpoints, corpus_with_ood, tmp_path):
    out = tmp_path / "report"
    report = evaluate(
        checkpoints["run"],
        tasks=["mt", "clnlu", "lac", "ppl"],
        pairs="en-cs,cs-uk",
        split="test,ood",
        out_dir=out,
        limit=5,
        max_new_tokens=4,
        n_boot=20,
    )
    metrics = metrics_of(report)
    for task, key, name in (
        ("mt", "en→cs", "chrf++"),
        ("clnlu", "cs→en choice", "accuracy"),
        ("lac", "en-cs (layer 1)", "lac"),
    ):
        test, ood = metrics[task, key, f"{name} (test)"], metrics[task, key, f"{name} (ood)"]
        assert (test["split"], ood["split"]) == ("test", "ood") and test["n"] == ood["n"] == 5
    # the ood numbers are the ood file's: its sources are what was translated
    assert (
        report["tasks"]["mt"]["details"]["en→cs (ood)"]["examples"][0]["src"]
        == "Package for reading PDF files."
    )
    assert report["tasks"]["lac"]["details"]["en-cs (ood)"]["data"] == "bundled ood"
    # cs-uk has no ood split: scored in domain, skipped out of domain with a note, never a crash
    assert ("mt", "cs→uk", "bleu (test)") in metrics and ("mt", "cs→uk", "bleu (ood)") not in metrics
    for task, key in (("mt", "mt"), ("clnlu", "choice"), ("lac", "lac"), ("ppl", "ppl")):
        assert report["tasks"][task]["data"] == {key: "bundled test, bundled ood"}
        if task != "ppl":
            note = "cs-uk: the bundled corpus has no 'ood' split (has dev, test); skipped"
            assert note in report["tasks"][task]["notes"]
    assert ("ppl", "en", "bits_per_byte (test)") in metrics
    assert "en: no bundled monolingual 'ood' split; skipped" in report["tasks"]["ppl"]["notes"]
    # report.md: the two splits in adjacent columns of one table
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| lac (test) | lac (ood) |" in markdown
    assert "| bleu (test) | bleu (ood) |" in markdown
    assert (out / "similarity_en-cs_ood.png").is_file() and (out / "similarity_en-cs_test.png").is_file()


def test_only_a_missing_split_skips_everything_with_notes(checkpoints, corpus_with_ood, tmp_path, capsys):
    report = evaluate(checkpoints["run"], tasks=["lac"], pairs="cs-uk", split="ood", limit=4, n_boot=10)
    assert report["tasks"]["lac"]["metrics"] == []
    assert report["tasks"]["lac"]["notes"][0].startswith("cs-uk: the bundled corpus has no 'ood' split")
    assert "cs-uk: the bundled corpus has no 'ood' split" in capsys.readouterr().err  # said, not only noted
