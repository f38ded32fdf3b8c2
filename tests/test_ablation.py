"""The ablation recipe end to end on a micro budget: two variants, three steps, a 2-layer model.

Checks that the generated table and plots exist, that every number in the table is the one in the
runs' report.json, that the token budget is the same for both variants, and that a second invocation
with ``--skip-existing`` reuses the finished runs and evaluations instead of redoing them.
"""

from __future__ import annotations

import json

import pytest
from conftest import LANGS, PAIRS

from clmap.evaluate.report import TASK_TITLES
from clmap.experiments import ablation

VARIANTS = ["ntp_only", "cl_map"]


def _args(corpus, tokenizer, out, docs, *extra: str) -> list[str]:
    sets = {
        "data.corpus": corpus,
        "data.languages": ",".join(LANGS),
        "data.pairs": ",".join(PAIRS),
        "model.hidden_size": 32,
        "model.intermediate_size": 64,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "data.seq_len": 64,
        "data.max_segment_tokens": 14,
        "data.pack_window": 32,
        "train.global_batch": 4,
        "train.micro_batch": 2,
        "optim.warmup_steps": 1,
        "checkpoint.every": 3,
    }
    args = [
        "--variants",
        ",".join(VARIANTS),
        "--seeds",
        "0",
        "--steps",
        "3",
        "--out",
        str(out),
        "--docs",
        str(docs),
        "--tokenizer",
        str(tokenizer),
        "--eval-limit",
        "8",
        "--tasks",
        "mt,clnlu,ppl,lac",
        "--pairs",
        "en-cs",
        "--max-new-tokens",
        "8",
        "--eval-batch-size",
        "8",
    ]
    return args + [f"--set={k}={v}" for k, v in sets.items()] + list(extra)


def _tables(markdown: str, heading: str) -> list[list[str]]:
    """Data rows of the first markdown table after ``heading``."""
    section = markdown.split(heading, 1)[1]
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


@pytest.fixture(scope="module")
def recipe(small_corpus, small_tokenizer, tmp_path_factory):
    out, docs = tmp_path_factory.mktemp("ablation"), tmp_path_factory.mktemp("docs")
    note = f"# note\n\nprose\n\n{ablation.BEGIN}\nold\n{ablation.END}\n\nmore prose\n"
    (docs / "ablation.md").write_text(note)
    assert ablation.main(_args(small_corpus, small_tokenizer, out, docs)) == 0
    return out, docs


def test_generated_table_and_plots_exist(recipe):
    out, docs = recipe
    for name in (
        "ablation_results.md",
        "ablation_results.json",
        "ablation_headline.png",
        "ablation_choice.png",
        "ablation_ppl.png",
        "ablation_lac_per_layer.png",
        "ablation_training.png",
        "ablation_mt_chrf.png",
    ):
        assert (docs / name).is_file() and (docs / name).stat().st_size > 0, name
    assert (out / "compare" / "comparison.md").is_file()  # the evaluator's own comparison mode ran
    note = (docs / "ablation.md").read_text()
    assert "old" not in note and "prose" in note and "more prose" in note
    assert "Δ vs (a) NTP only" in note and "(d) NTP + CL + map vs (a) NTP only:" in note


def test_table_numbers_are_the_reports_numbers(recipe):
    out, docs = recipe
    text = (docs / "ablation_results.md").read_text()
    reports = {v: json.loads((out / "eval" / f"{v}_s0" / "report.json").read_text()) for v in VARIANTS}
    checked = 0
    for task_title in (
        "Machine translation",
        "Cross-lingual understanding",
        "Perplexity per language",
        "Language alignment",
    ):
        task = {title: name for name, title in TASK_TITLES.items()}[task_title]
        for key, metric, *cells in _tables(text, f"### {task_title}"):
            for variant, cell in zip(VARIANTS, cells, strict=True):
                entry = next(
                    m
                    for m in reports[variant]["tasks"][task]["metrics"]
                    if m["key"] == key and m["metric"] == metric
                )
                expected = ablation.fmt(entry["value"])
                if entry["ci"]:
                    expected += f" [{ablation.fmt(entry['ci'][0])}, {ablation.fmt(entry['ci'][1])}]"
                assert cell == expected, (task, key, metric, variant)
                checked += 1
    assert checked >= 12
    # the deltas vs NTP-only are the differences of the two reports
    delta_rows = _tables(text.split("### Cross-lingual understanding", 1)[1], "Δ vs (a) NTP only:")
    for key, _metric, cell in delta_rows:
        value = {
            v: next(m["value"] for m in reports[v]["tasks"]["clnlu"]["metrics"] if m["key"] == key)
            for v in VARIANTS
        }
        assert cell.rstrip("*") == ablation.fmt_delta(value["cl_map"] - value["ntp_only"])


def test_same_token_budget_reported_from_the_runs(recipe):
    out, docs = recipe
    rows = _tables((docs / "ablation_results.md").read_text(), "## Token budget")
    assert [r[0] for r in rows] == [ablation.LABELS[v] for v in VARIANTS]
    assert {r[1] for r in rows} == {"3"} and {r[2] for r in rows} == {f"{3 * 4 * 64:,}"}
    for row, variant in zip(rows, VARIANTS, strict=True):
        lines = (out / f"{variant}_s0" / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert row[4] == f"{sum(r['tokens/targets'] for r in records):,.0f}"
    # CL source sides are inputs but not targets: fewer targets than NTP-only for the same inputs
    assert float(rows[1][4].replace(",", "")) < float(rows[0][4].replace(",", ""))


def test_skip_existing_reuses_finished_runs(recipe, small_corpus, small_tokenizer, capsys):
    out, docs = recipe
    before = (out / "ntp_only_s0" / "metrics.jsonl").stat().st_mtime
    assert ablation.main(_args(small_corpus, small_tokenizer, out, docs, "--skip-existing")) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished run reused") == 2 and printed.count("evaluation reused") == 2
    assert (out / "ntp_only_s0" / "metrics.jsonl").stat().st_mtime == before
    with pytest.raises(RuntimeError, match="--skip-existing"):
        ablation.main(_args(small_corpus, small_tokenizer, out, docs))
    with pytest.raises(RuntimeError, match="another config"):
        ablation.main(_args(small_corpus, small_tokenizer, out, docs, "--skip-existing", "--steps", "4"))


def test_variant_files_are_overrides_of_the_base():
    assert ablation.variant_overrides("ntp_only") == [
        "--data.ntp_share=1.0",
        "--objective.lambda_cl=0.0",
        "--objective.lambda_map=0.0",
    ]
    assert "--data.parallel_as_text=true" in ablation.variant_overrides("parallel_text")
    assert "--data.cl_directions=forward" in ablation.variant_overrides("cl_forward")
    with pytest.raises(FileNotFoundError, match="known: cl_both"):
        ablation.variant_overrides("nope")
    assert ablation.fmt_delta(0.5) == "+0.5" and ablation.fmt(12.345) == "12.35"
