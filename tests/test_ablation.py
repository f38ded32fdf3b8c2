"""The ablation recipe end to end at a toy size: the continue protocol (a 4-step base model, two variants
continued from it, two seeds, a scale curve over 3 and 6 stage-2 steps), its results file and the
write-up regenerated from that file.

Checks that every run continues the base with the base's tokenizer, that the shorter budget taken from
the long run's checkpoint is exactly a run of that many steps, that the baselines are scored in the text
template and the CL runs in both formats, that every number in the tables is the one in the runs'
report.json, that the docs regenerate from the results file alone, and that ``--skip-existing`` reuses
finished runs and evaluations.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import LANGS, PAIRS, run_train, tiny_overrides
from safetensors.torch import load_file

from clmap.evaluate.report import fmt
from clmap.evaluate.tasks import TASK_TITLES
from clmap.experiments import ablation, recipe, results, stats, writeup

VARIANTS = ["ntp_only", "cl_map"]
RECIPE_SETS = ("--run_dir", "--tokenizer.path", "--train.steps")  # the recipe sets these per run
TEMPLATE = """# note

prose before

<!-- ablation:run -->
old
<!-- /ablation:run -->

<!-- ablation:headline -->
old
<!-- /ablation:headline -->

<!-- ablation:template-view -->
<!-- /ablation:template-view -->

<!-- ablation:scale -->
<!-- /ablation:scale -->

<!-- ablation:deltas -->
<!-- /ablation:deltas -->

more prose
"""


def _args(corpus, tokenizer, out, docs, *extra: str) -> list[str]:
    """The toy recipe: conftest's tiny model on the small corpus with shorter rows and batches."""
    smaller = {
        "data.seq_len": 64,
        "data.max_segment_tokens": 14,
        "data.pack_window": 32,
        "train.global_batch": 4,
    }
    smaller.update({"optim.warmup_steps": 1, "metrics.eval_every": 0})
    sets = [
        o for o in tiny_overrides(corpus, tokenizer, out, **smaller) if o.split("=")[0] not in RECIPE_SETS
    ]
    args = [
        "--protocol",
        "continue",
        "--variants",
        ",".join(VARIANTS),
        "--scale-variants",
        ",".join(VARIANTS),
    ]
    args += ["--seeds", "0,1", "--base-steps", "4", "--budgets", "3,6", "--main-budget", "3", "--jobs", "2"]
    args += ["--out", str(out), "--docs", str(docs), "--tokenizer", str(tokenizer), "--eval-limit", "8"]
    args += ["--eval-task-limit", "mt=4"]  # MT's own item count, as the CPU preset gives generation fewer
    args += ["--tasks", "mt,clnlu,ppl,lac", "--pairs", "en-cs", "--splits", "test", "--max-new-tokens", "8"]
    args += ["--eval-batch-size", "8", "--base-nproc", "1"]
    return args + [f"--set={o[2:]}" for o in sets] + list(extra)


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


def _numbers(cell: str) -> list[float]:
    """``"5.5 [-26.26, 37.27]"`` → [5.5, -26.26, 37.27] (the tables round to 4 significant digits)."""
    return [float(x) for x in cell.replace("[", "").replace("]", "").replace(",", " ").split()]


def _report(out, name: str, prompt_format: str) -> dict:
    return json.loads((out / "eval" / name / prompt_format / "report.json").read_text())


@pytest.fixture(scope="module")
def recipe_run(small_corpus, small_tokenizer, tmp_path_factory):
    out, docs = tmp_path_factory.mktemp("ablation"), tmp_path_factory.mktemp("docs")
    (docs / "ablation.md").write_text(TEMPLATE)
    assert ablation.main(_args(small_corpus, small_tokenizer, out, docs)) == 0
    return out, docs


def test_plan_of_the_continue_protocol(small_corpus, small_tokenizer, tmp_path):
    args = ablation.resolve(
        ablation.build_parser().parse_args(_args(small_corpus, small_tokenizer, tmp_path, tmp_path))
    )
    runs = recipe.plan_runs(args, small_tokenizer)
    assert [r.name for r in runs] == [
        "base",
        "ntp_only_s0_6",
        "ntp_only_s0_3",
        "cl_map_s0_6",
        "cl_map_s0_3",
        "ntp_only_s1_3",
        "cl_map_s1_3",
    ]
    base, rest = runs[0], runs[1:]
    assert "--data.parallel_as_mono=true" in base.overrides and "--objective.lambda_cl=0.0" in base.overrides
    assert "--optim.lr=0.003" in base.overrides and "--optim.lr=0.001" in runs[1].overrides  # the cpu preset
    assert f"--tokenizer.path={small_tokenizer}" in base.overrides and base.formats == ("template",)
    for run in rest:
        trained = run.parent or run
        assert f"--model.init_from={tmp_path / 'base'}" in trained.overrides
        assert not any(o.startswith("--tokenizer.path") for o in trained.overrides)  # the base's tokenizer
        assert (
            f"--train.seed={run.seed}" in trained.overrides
            and "--optim.min_lr_ratio=1.0" in trained.overrides
        )
        assert run.formats == (("mapping", "template") if run.variant == "cl_map" else ("template",))
    long = runs[1]
    assert long.children == [runs[2]] and runs[2].parent is long and runs[2].overrides == []
    assert "--checkpoint.every=3" in long.overrides and "--checkpoint.keep=3" in long.overrides
    # the earlier protocol: every variant from scratch, one run per variant and seed
    args.protocol, args.steps = "scratch", 3
    scratch = recipe.plan_runs(args, small_tokenizer)
    assert [r.name for r in scratch] == ["ntp_only_s0", "cl_map_s0", "ntp_only_s1", "cl_map_s1"]
    assert all(r.steps == 3 and not any("init_from" in o for o in r.overrides) for r in scratch)


def test_every_run_continues_the_base_with_its_tokenizer(recipe_run):
    out, _ = recipe_run
    base_tokenizer = (out / "base" / "hf" / "tokenizer.model").read_bytes()
    for name in ("ntp_only_s0_6", "cl_map_s0_6", "ntp_only_s1_3", "cl_map_s1_3"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["model"]["init_from"] == str(out / "base")
        assert (out / name / "tokenizer" / "tokenizer.model").read_bytes() == base_tokenizer
        assert config["optim"]["min_lr_ratio"] == 1.0
    base = json.loads((out / "base" / "config.json").read_text())
    assert base["data"]["parallel_as_mono"] and base["objective"]["lambda_cl"] == 0.0


def test_a_shorter_budget_is_the_long_runs_checkpoint(recipe_run, small_corpus, small_tokenizer, tmp_path):
    """With stage 2's constant learning rate, a 3-step run equals step 3 of the 6-step run, bit for bit
    (a decaying schedule would differ from step 3 on: the test failed with stage 2 at min_lr_ratio 0.1)."""
    out, docs = recipe_run
    args = ablation.resolve(
        ablation.build_parser().parse_args(_args(small_corpus, small_tokenizer, out, docs))
    )
    long = next(r for r in recipe.plan_runs(args, small_tokenizer) if r.name == "ntp_only_s0_6")
    kept = [o for o in long.overrides if not o.startswith(("--run_dir", "--train.steps", "--checkpoint."))]
    run_train(["--config", args.base, *kept, f"--run_dir={tmp_path / 'two'}", "--train.steps=3"])
    separate = load_file(str(tmp_path / "two" / "hf" / "model.safetensors"))
    exported = load_file(str(out / "ntp_only_s0_3" / "hf" / "model.safetensors"))
    final = load_file(str(out / "ntp_only_s0_6" / "hf" / "model.safetensors"))
    assert separate.keys() == exported.keys()
    assert all(torch.equal(separate[k], exported[k]) for k in separate)
    assert not torch.equal(final["model.embed_tokens.weight"], exported["model.embed_tokens.weight"])
    assert json.loads((out / "ntp_only_s0_3" / "config.json").read_text())["train"]["steps"] == 3


def test_the_recipe_from_token_stores_trains_what_it_trains_from_texts(
    recipe_run, small_corpus, small_tokenizer, tmp_path
):
    """``--stores``: stage 1 from stores of documents (pair sides merged, as data.parallel_as_mono reads
    the texts) and stage 2 from stores of pairs, built by the recipe; both models equal the texts-trained
    ones of the same recipe bit for bit."""
    out, _ = recipe_run
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ablation.md").write_text(TEMPLATE)
    argv = _args(small_corpus, small_tokenizer, tmp_path / "out", docs)
    argv += ["--seeds", "0", "--variants", "cl_map", "--scale-variants", "", "--budgets", "3"]
    argv += ["--tasks", "ppl", "--stores", str(tmp_path / "stores")]
    assert ablation.main(argv) == 0
    for name, layout in (("base", "documents"), ("cl_map_s0_3", "pairs")):
        config = json.loads((tmp_path / "out" / name / "config.json").read_text())
        assert config["data"]["store"] == str(tmp_path / "stores" / layout)
        ours = load_file(str(tmp_path / "out" / name / "hf" / "model.safetensors"))
        theirs = load_file(str(out / name / "hf" / "model.safetensors"))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert sorted(p.name for p in (tmp_path / "stores" / "documents").iterdir()) == [
        "layout.json",
        "merged",
        "mono",
        "tokenizer",
    ]
    assert (tmp_path / "stores" / "pairs" / "parallel" / "en-cs" / "store.json").is_file()


def test_prompt_formats_are_fair(recipe_run):
    """Baselines in the text template only; CL runs in the mapping format (all tasks) and the template
    (MT and translation choice only)."""
    out, _ = recipe_run
    for name in ("base", "ntp_only_s0_3", "ntp_only_s1_3"):
        assert sorted(p.name for p in (out / "eval" / name).iterdir() if p.is_dir()) == ["template"]
        assert "template" in _report(out, name, "template")["settings"]["prompt"]
    for name in ("cl_map_s0_3", "cl_map_s1_3"):
        assert _report(out, name, "mapping")["settings"]["tasks"] == "mt,clnlu,ppl,lac"
        assert _report(out, name, "template")["settings"]["tasks"] == "mt,clnlu"
        assert "template" in _report(out, name, "template")["settings"]["prompt"]
        assert "mapping" in _report(out, name, "mapping")["settings"]["prompt"]


def test_table_numbers_are_the_reports_numbers(recipe_run):
    """Every cell of the per-metric tables: the mean of the two seeds' report values with the t interval
    (t = 12.706 at one degree of freedom), computed here from the reports themselves."""
    out, docs = recipe_run
    text = (docs / "ablation_results.md").read_text()
    checked = 0
    for task_title in ("Machine translation", "Cross-lingual understanding", "Perplexity per language"):
        task = {title: name for name, title in TASK_TITLES.items()}[task_title]
        for key, metric, split, *cells in _tables(text, f"### {task_title}"):
            assert split == "test"
            for variant, text_cell in zip(VARIANTS, cells, strict=True):
                own = "mapping" if variant == "cl_map" else "template"
                values = [
                    next(
                        m["value"]
                        for m in _report(out, f"{variant}_s{seed}_3", own)["tasks"][task]["metrics"]
                        if m["key"] == key and m["metric"] == metric
                    )
                    for seed in (0, 1)
                ]
                mean, half = sum(values) / 2, 12.706 * abs(values[0] - values[1]) / 2
                expected = (mean, mean - half, mean + half)
                assert _numbers(text_cell) == pytest.approx(expected, rel=1e-3, abs=1e-6), (
                    task,
                    key,
                    variant,
                )
                checked += 1
    assert checked >= 10
    # the deltas vs NTP-only are the paired differences of the reports
    delta_rows = _tables(text.split("### Cross-lingual understanding", 1)[1], "Δ vs (a) NTP only:")
    for key, _metric, _split, cell in delta_rows:
        diffs = [
            next(
                m["value"]
                for m in _report(out, f"cl_map_s{s}_3", "mapping")["tasks"]["clnlu"]["metrics"]
                if m["key"] == key
            )
            - next(
                m["value"]
                for m in _report(out, f"ntp_only_s{s}_3", "template")["tasks"]["clnlu"]["metrics"]
                if m["key"] == key
            )
            for s in (0, 1)
        ]
        assert _numbers(cell.rstrip("*"))[0] == pytest.approx(sum(diffs) / 2, rel=1e-3, abs=1e-6)


def test_headline_deltas_carry_the_paired_bootstrap_of_the_reports_items(recipe_run, monkeypatch):
    """A headline delta's paired interval is the joint bootstrap over the items the two arms' reports
    stored, both seeds paired (CL + map's mapping-format report against NTP-only's template one),
    recomputed here from the report.json files; the toy run's 8 documents are too few for an interval,
    which the write-up says, so the interval itself is checked with the threshold lowered."""
    from clmap.evaluate import bootstrap

    out, docs = recipe_run
    text = (docs / "ablation_results.md").read_text()
    line = next(
        x for x in text.splitlines() if x.startswith("- (d) NTP + CL + map vs (a) NTP only, in-domain")
    )
    parts = dict(
        part.split(" ", 1)
        for part in line.split(": ", 1)[1]
        .replace("retrieval P@1", "P@1")
        .replace("LAC above floor", "LAC-floor")
        .split("; ")
    )
    monkeypatch.setattr(bootstrap, "MIN_DOCUMENTS", 2)
    indexed = stats.select(list(_results(docs).values()), 3, "own")
    head = stats.headline(indexed, recipe.BASELINES)
    for task, metric, label in [("mt", "chrf++", "chrF++"), ("lac", "lac", "LAC")]:
        groups: dict[str, list] = {}
        for seed in (0, 1):
            mine = _report(out, f"cl_map_s{seed}_3", "mapping")["tasks"][task]["metrics"]
            their = _report(out, f"ntp_only_s{seed}_3", "template")["tasks"][task]["metrics"]
            theirs = {m["key"]: m["items"] for m in their if m["metric"] == metric}
            for m in (m for m in mine if m["metric"] == metric):
                pair = (m["items"], theirs[m["key"]])
                groups.setdefault(m["key"], []).append(tuple(map(bootstrap.ItemScores.from_dict, pair)))
        want = bootstrap.paired_mean_interval(list(groups.values()), stats.PAIRED_BOOTSTRAP, 0)
        assert f"(paired: {want['documents']} documents, too few for an interval)" in parts[label]
        got = head["paired"][label, "test", "ntp_only", "cl_map"]
        assert got["lo"] is not None and got == pytest.approx(want)
    assert "paired" not in parts["BLEU"] and "paired" not in parts["P@1"]
    assert "(paired: " in parts["LAC-floor"]  # the mapping layer minus the embedding layer, from its items


def test_token_budget_and_scale_curve(recipe_run):
    out, docs = recipe_run
    text = (docs / "ablation_results.md").read_text()
    rows = _tables(text, "## Token budget")
    assert [r[0] for r in rows] == [recipe.LABELS[v] for v in ("base", *VARIANTS)]
    assert [r[1] for r in rows] == ["4", "3", "3"] and rows[1][2] == rows[2][2] == f"{3 * 4 * 64:,}"
    # CL source sides are inputs but not targets: fewer targets than NTP-only for the same inputs
    assert float(rows[2][4].replace(",", "")) < float(rows[1][4].replace(",", ""))
    scale = _tables(text, "## Scale curve")
    chrf = [r for r in scale if r[0] == "chrF++" and r[1] == "in-domain (test)"]
    assert [r[2] for r in chrf] == ["0 (base)", "3", "6"]
    base_chrf = stats.headline_values(stats.run_metrics(_results(docs)["base"], "own"))["chrF++", "test"]
    assert chrf[0][3].split(" ")[0] == fmt(sum(base_chrf.values()) / len(base_chrf))
    assert "(n=2)" in chrf[1][3] and "(n=2)" not in chrf[2][3]  # two seeds at the main budget, one at 6


def _results(docs) -> dict[str, dict]:
    return {r["name"]: r for r in results.read_results(docs / "ablation_results.json")["runs"]}


def test_docs_regenerate_from_the_results_file(recipe_run, tmp_path):
    out, docs = recipe_run
    note = (docs / "ablation.md").read_text()
    assert "old" not in note and "prose before" in note and "more prose" in note
    assert "Δ vs (a) NTP only" in note and "(d) NTP + CL + map vs (a) NTP only, in-domain (test):" in note
    assert "; wall time " in note and "reused" not in note  # a first invocation did everything itself
    for name in (
        "ablation_results.md",
        "ablation_headline_test.png",
        "ablation_scale.png",
        "ablation_training.png",
    ):
        assert (docs / name).is_file() and (docs / name).stat().st_size > 0, name
    copy = tmp_path / "docs"
    copy.mkdir()
    (copy / "ablation.md").write_text(TEMPLATE)
    shutil.copy(docs / "ablation_results.json", tmp_path / "results.json")
    assert (
        ablation.main(["--report-only", "--results", str(tmp_path / "results.json"), "--docs", str(copy)])
        == 0
    )
    assert (copy / "ablation.md").read_text() == note
    assert (copy / "ablation_results.md").read_text() == (docs / "ablation_results.md").read_text()
    (copy / "ablation.md").write_text(TEMPLATE + "<!-- ablation:nope -->\n<!-- /ablation:nope -->\n")
    with pytest.raises(KeyError, match="ablation:nope"):
        ablation.main(["--report-only", "--results", str(tmp_path / "results.json"), "--docs", str(copy)])


def test_in_and_out_of_domain_side_by_side(recipe_run, tmp_path):
    """A results file with an ood split (here: the test scores shifted by 0.1) renders each headline
    metric's in-domain row beside its out-of-domain row, with deltas per split."""
    _, docs = recipe_run
    data = results.read_results(docs / "ablation_results.json")
    for run in data["runs"]:
        run["metrics"] += [{**m, "split": "ood", "value": m["value"] + 0.1} for m in run["metrics"]]
    blocks, _ = writeup.render(data, tmp_path)
    rows = _tables("\n" + "\n".join(blocks["headline"]), "\n")
    lac = [r for r in rows if r[0] == "LAC"]
    assert [r[1] for r in lac] == ["in-domain (test)", "out-of-domain (ood)"]
    for test_cell, ood_cell in zip(lac[0][2:], lac[1][2:], strict=True):
        assert float(ood_cell.split(" ")[0]) == pytest.approx(float(test_cell.split(" ")[0]) + 0.1, abs=1e-3)
    assert any("out-of-domain (ood)" in line for line in blocks["deltas"])


def test_the_results_file_stores_each_item_set_once_and_reads_back_whole(recipe_run, tmp_path):
    """Every run and metric that scored the same items shares one ``item_sets`` entry (ids and
    documents written once); reading gives every metric its ids again, equal to the reports'."""
    out, docs = recipe_run
    path = docs / "ablation_results.json"
    data = results.read_results(path)
    raw = json.loads(path.read_text())
    mt = next(m for m in _report(out, "cl_map_s1_3", "mapping")["tasks"]["mt"]["metrics"] if m.get("items"))
    scored = {
        json.dumps([m["items"]["ids"], m["items"]["docs"]])
        for report in out.glob("eval/*/*/report.json")
        for task in json.loads(report.read_text())["tasks"].values()
        for m in task["metrics"]
        if m.get("items")
    }
    assert len(raw["item_sets"]) == len(scored) >= 2  # at least MT's 4 items and the others' 8
    assert path.read_text().count(json.dumps(mt["items"]["ids"][0])) == 1
    record = next(r for r in data["runs"] if r["name"] == "cl_map_s1_3")
    mine = next(
        m for m in record["metrics"] if (m["task"], m["key"], m["metric"]) == ("mt", mt["key"], mt["metric"])
    )
    assert mine["items"]["ids"] == mt["items"]["ids"] and mine["items"]["values"] == mt["items"]["values"]
    copy = results.write_results(tmp_path / "again.json", data["meta"], data["runs"])
    assert results.read_results(copy) == data
    raw["runs"][0]["metrics"] = [{**m, "items": {"set": "s99"}} for m in raw["runs"][0]["metrics"]]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="names item set 's99', not in item_sets"):
        results.read_results(tmp_path / "bad.json")


def test_reports_scored_on_several_splits_are_read_apart():
    """The evaluator's multi-split report: metrics carry ``split`` and a `` (split)`` name suffix."""
    report = {
        "settings": {"split": "test,ood"},
        "tasks": {
            "mt": {
                "metrics": [
                    {
                        "key": "en→cs",
                        "metric": "chrf++ (ood)",
                        "value": 3.0,
                        "ci": None,
                        "n": 8,
                        "split": "ood",
                    }
                ]
            },
            "lac": {
                "metrics": [
                    {
                        "key": "en-cs (layer 1)",
                        "metric": "lac (test)",
                        "value": 0.2,
                        "ci": [0.1, 0.3],
                        "n": 8,
                        "split": "test",
                    }
                ],
                "details": {
                    "en-cs (ood)": {
                        "split": "ood",
                        "layers": [{"layer": 0, "lac": 0.1, "lac_lo": 0.0, "lac_hi": 0.2}],
                    }
                },
            },
        },
    }
    metrics, layers = results.report_entries(report, "mapping")
    assert [(m["task"], m["metric"], m["split"], m["format"]) for m in metrics] == [
        ("mt", "chrf++", "ood", "mapping"),
        ("lac", "lac", "test", None),
    ]
    assert layers == [{"pair": "en-cs", "split": "ood", "layer": 0, "lac": 0.1, "lac_lo": 0.0, "lac_hi": 0.2}]
    single = {
        "settings": {"split": "test"},
        "tasks": {"ppl": {"metrics": [{"key": "en", "metric": "ppl", "value": 9.0}]}},
    }
    assert results.report_entries(single, "template")[0][0]["split"] == "test"


def test_the_per_task_item_counts_reach_every_evaluation_and_the_run_line(recipe_run):
    """``--eval-limit 8 --eval-task-limit mt=4``: every report's MT scores 4 items a direction, the
    other tasks 8; the results file and the write-up's run line say so."""
    out, docs = recipe_run
    for name, prompt_format in (
        ("base", "template"),
        ("cl_map_s1_3", "mapping"),
        ("cl_map_s1_3", "template"),
    ):
        tasks = _report(out, name, prompt_format)["tasks"]
        assert [len(tasks["mt"]["details"][d]["item_ids"]) for d in ("en→cs", "cs→en")] == [4, 4]
        assert tasks["clnlu"]["details"]["en→cs choice"]["n"] == 8
        if "lac" in tasks:
            assert len(tasks["lac"]["details"]["en-cs"]["item_ids"]) == 8
    meta = json.loads((docs / "ablation_results.json").read_text())["meta"]
    assert (meta["eval_limit"], meta["eval_task_limit"]) == (8, {"mt": 4})
    assert "8 items (mt 4) per task and direction" in (docs / "ablation.md").read_text()


def test_skip_existing_reuses_finished_runs(recipe_run, small_corpus, small_tokenizer, capsys):
    out, docs = recipe_run
    before = (out / "cl_map_s0_6" / "metrics.jsonl").stat().st_mtime
    assert ablation.main(_args(small_corpus, small_tokenizer, out, docs, "--skip-existing")) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished run reused") == 7 and printed.count("evaluation reused") == 10
    assert (out / "cl_map_s0_6" / "metrics.jsonl").stat().st_mtime == before
    # the wall time is this invocation's, and the write-up says how much of the recipe it reused
    assert "reused 7 of 7 training jobs and 10 of 10 evaluations" in (docs / "ablation.md").read_text()
    with pytest.raises(RuntimeError, match="--skip-existing"):
        ablation.main(_args(small_corpus, small_tokenizer, out, docs))
    with pytest.raises(RuntimeError, match="another config"):
        ablation.main(
            _args(small_corpus, small_tokenizer, out, docs, "--skip-existing", "--set=optim.lr=1e-4")
        )


def test_stage1_reads_pair_sides_as_documents(small_corpus):
    from clmap.config import ConfigError, load_config
    from clmap.data.pipeline import load_texts

    base = [
        f"--data.corpus={small_corpus}",
        f"--data.languages={','.join(LANGS)}",
        f"--data.pairs={','.join(PAIRS)}",
    ]
    mono, parallel = load_texts(load_config(None, base), "train")
    merged, none = load_texts(load_config(None, [*base, "--data.parallel_as_mono=true"]), "train")
    assert none == {}
    for pair, (src, tgt) in parallel.items():
        a, b = pair.split("-")
        assert set(src) <= set(merged[a]) and set(tgt) <= set(merged[b])
    for lang in LANGS:
        assert set(mono[lang]) <= set(merged[lang]) and len(merged[lang]) == len(set(merged[lang]))
    with pytest.raises(ConfigError, match=r"pair languages \['cs'\] are not in data.languages"):
        load_config(None, ["--data.languages=en,uk", "--data.pairs=en-cs", "--data.parallel_as_mono=true"])


def test_variant_files_are_overrides_of_the_base():
    assert recipe.variant_overrides("ntp_only") == [
        "--data.ntp_share=1.0",
        "--objective.lambda_cl=0.0",
        "--objective.lambda_map=0.0",
    ]
    assert "--data.parallel_as_text=true" in recipe.variant_overrides("parallel_text")
    assert "--data.cl_directions=forward" in recipe.variant_overrides("cl_forward")
    with pytest.raises(FileNotFoundError, match="known: cl_both"):
        recipe.variant_overrides("nope")
    assert "--optim.min_lr_ratio=1.0" in recipe.stage_overrides("stage2")
    assert writeup.fmt_delta(0.5) == "+0.5" and fmt(12.345) == "12.35"
    assert stats.mean_interval([1.0, 3.0]) == (2.0, 2.0 - 12.706, 2.0 + 12.706)


def test_a_pretrained_base_is_continued_and_evaluated_as_a_row(recipe_run, small_corpus, tmp_path):
    """``--base-steps 0`` with ``model.path``: no stage 1; every variant continues the pretrained
    folder (its weights and tokenizer), and the pretrained model itself is evaluated, untouched, as the
    ``pretrained`` row of the tables (the real-model preset, ``--preset gemma``, at toy size)."""
    out, _ = recipe_run
    pretrained = out / "base" / "hf"  # a Hugging Face folder, as models/gemma3-270m is
    before = (pretrained / "model.safetensors").read_bytes()
    args = _args(small_corpus, pretrained, tmp_path / "runs", tmp_path / "docs")
    args = [a for a in args if not a.startswith(("--set=model.", "--set=tokenizer."))]
    for flag, value in (
        ("--base-steps", "0"),
        ("--budgets", "3"),
        ("--seeds", "0"),
        ("--scale-variants", ""),
    ):
        args[args.index(flag) + 1] = value
    args.remove("--tokenizer"), args.remove(str(pretrained))
    args += [f"--set=model.path={pretrained}", f"--set=tokenizer.path={pretrained}"]
    assert ablation.main(args) == 0
    runs = {r["name"]: r for r in results.read_results(tmp_path / "docs" / "ablation_results.json")["runs"]}
    assert set(runs) == {"pretrained", "ntp_only_s0_3", "cl_map_s0_3"}
    assert runs["pretrained"]["stage"] == "pretrained" and runs["pretrained"]["training"] is None
    report = json.loads((tmp_path / "runs" / "eval" / "pretrained" / "template" / "report.json").read_text())
    assert (
        report["checkpoint"].endswith(str(pretrained))
        and (pretrained / "model.safetensors").read_bytes() == before
    )
    for name in ("ntp_only_s0_3", "cl_map_s0_3"):
        config = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert config["model"]["path"] == str(pretrained) and not config["model"]["init_from"]
    # the pretrained model is a column of the tables beside the variants, with its own reported values
    indexed = stats.select(list(runs.values()), 3, "own")
    assert list(indexed) == ["pretrained", "ntp_only", "cl_map"]
    chrf = next(m for m in report["tasks"]["mt"]["metrics"] if m["metric"].startswith("chrf++"))
    key = ("mt", chrf["key"], chrf["metric"].removesuffix(" (test)"), "test")
    assert indexed["pretrained"][0][key]["value"] == chrf["value"]
    assert recipe.LABELS["pretrained"] in (tmp_path / "docs" / "ablation_results.md").read_text()


# -- every number of the committed write-ups is generated -------------------------------------------------
# The write-ups and the results files their numbers come from (the Gemma page's learning-rate sweep reads
# its own results files through inline values). Allowed outside the generated parts: 95, the confidence
# level of every interval (a constant of the method, in no results file).
WRITEUPS = {
    "ablation": ["ablation_results.json"],
    "ablation_gemma": [
        "ablation_gemma_results.json",
        "gemma_lr_sweep/lr_1e-4_results.json",
        "gemma_lr_sweep/lr_5e-6_results.json",
    ],
}
ALLOWED_NUMBERS = ("95",)


@pytest.mark.parametrize("stem", sorted(WRITEUPS))
def test_every_number_of_the_writeup_is_generated(stem, tmp_path):
    """The committed page regenerates unchanged from its committed results files (so every block and
    inline value is what the files give), and every number outside those generated parts is a setting
    of the results files (their meta, the configs they name) or in the allow-list. Seen failing with a
    made-up 0.123 in the prose, with an edited inline value, and with the CPU page's old hand-typed
    "Checked on more items" section."""
    from clmap.experiments import provenance

    repo = recipe.REPO
    docs = repo / "docs"
    copy = tmp_path / "docs"
    for name in [f"{stem}.md", *WRITEUPS[stem]]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(docs / name, copy / name)
    writeup.write_docs(results.read_results(copy / WRITEUPS[stem][0]), copy, stem)
    committed = (docs / f"{stem}.md").read_text(encoding="utf-8")
    assert (copy / f"{stem}.md").read_text(encoding="utf-8") == committed, "regenerate with --report-only"
    sources = provenance.settings_sources([docs / f for f in WRITEUPS[stem]], repo)
    unsourced = provenance.unsourced_numbers(committed, sources, ALLOWED_NUMBERS)
    assert not unsourced, "hand-typed numbers: " + ", ".join(f"line {p.line}: {p.text}" for p in unsourced)


def test_a_number_outside_the_generated_parts_is_refused():
    """The checker itself: generated parts and settings pass, a made-up number in the prose does not,
    integers only exactly, decimals at their printed rounding."""
    from clmap.experiments import provenance

    sources = provenance.Sources()
    sources.add_json({"seeds": [0, 1, 2], "lr": 3e-3, "model": "Llama 4 layers × 128 hidden"})
    text = (
        "Seeds 0, 1 and 2, a Llama of 4 layers × 128 at 3e-3 (P@1, fp32, `--steps 120`).\n"
        "<!-- v:mean|own|LAC|test|cl_map -->0.4655<!-- /v --> and <!-- ablation:run -->\n7.5\n"
        "<!-- /ablation:run -->\n"
    )
    assert provenance.unsourced_numbers(text, sources) == []
    bad = provenance.unsourced_numbers(text + "LAC rose by 0.123, 5 seeds, 1,000 items at 0.0030.\n", sources)
    assert [p.text for p in bad] == ["0.123", "5", "1,000"]


def test_targets_by_kind_from_the_logged_mixture():
    """The ½ NTP share is one of samples: the training summary splits the prediction targets by kind
    from the logged ``mix/`` shares (seen failing with the pair keys counted as NTP)."""
    records = [
        {"step": 1, "tokens/targets": 100.0, "mix/en": 0.25, "mix/cs": 0.25, "mix/en-cs": 0.5},
        {"step": 2, "tokens/targets": 60.0, "mix/en": 1.0},
    ]
    assert results.targets_by_kind(records, ["en-cs"]) == {"ntp": 110.0, "pairs": 50.0}
    assert results.targets_by_kind([{"step": 1, "tokens/targets": 5.0}], ["en-cs"]) is None
    runs = [
        {"variant": v, "stage": "continue", "steps": 3, "training": t}
        for v, t in (
            ("ntp_only", {"steps": 3, "budget_tokens": 9, "input_tokens": 9, "target_tokens": 8}),
            (
                "cl_map",
                {
                    "steps": 3,
                    "budget_tokens": 9,
                    "input_tokens": 9,
                    "target_tokens": 6,
                    "targets_by_kind": {"ntp": 4.0, "pairs": 2.0},
                },
            ),
        )
    ]
    for t in (r["training"] for r in runs):
        t.update(
            {k: t.get(k) for k in ("final_loss_ntp", "final_loss_cl", "final_loss_map")}, train_seconds=60
        )
    rows = _tables("\n" + "\n".join(writeup.budget_table(runs, 3)), "\n")
    assert rows[1][5:8] == ["4", "2", "-25.0 %"] and rows[0][5:8] == ["–", "–", "–"]


def test_a_run_of_fewer_arms_refills_the_page_with_its_gaps_named(tmp_path, capsys):
    """After training, the recipe refills a page written for every arm from a run of fewer (the GPU
    preset's dry run: no pairs-as-text arm): a value the results lack is printed as "–" and named,
    not a traceback that loses the page; regenerating strictly (--report-only, the provenance test)
    still refuses it. Seen failing with the lenient path raising like the strict one."""
    full = results.read_results(recipe.REPO / "docs" / "ablation_results.json")
    fewer = {**full, "runs": [r for r in full["runs"] if r["variant"] != "parallel_text"]}
    shutil.copy(recipe.REPO / "docs" / "ablation.md", tmp_path / "ablation.md")
    with pytest.raises(KeyError, match="parallel_text"):
        writeup.write_docs(fewer, tmp_path, "ablation")
    writeup.write_docs(fewer, tmp_path, "ablation", strict=False)
    printed = capsys.readouterr().out
    assert "not in these results" in printed and "parallel_text" in printed
    page = (tmp_path / "ablation.md").read_text(encoding="utf-8")
    assert "-->–<!-- /v -->" in page
    kept = "<!-- v:mean|own|chrF++|test|cl_map -->"
    assert kept in page and f"{kept}–" not in page  # the arms it has keep their numbers
