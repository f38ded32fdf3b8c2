"""Benchmark infrastructure: the report generator, the GPU suite's dry run and the throughput benchmark."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import report

REPO = Path(__file__).resolve().parent.parent
ENV = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0", "python": "3.12.3"}
# The tiny sizes the dry run uses too: a few seconds of training per process on a small CPU.
TINY = [
    "--model.hidden_size=32",
    "--model.intermediate_size=64",
    "--model.num_layers=2",
    "--model.num_heads=2",
    "--model.num_kv_heads=1",
    "--data.seq_len=64",
    "--data.max_segment_tokens=12",
    "--train.global_batch=4",
    "--train.micro_batch=2",
    "--tokenizer.vocab_size=2000",
    "--tokenizer.train_sentences=3000",
]


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _mapping_rows() -> list[dict]:
    rows = []
    times = {"naive": 4.0, "liger": 2.0, "clmap": 1.0}
    mems = {"naive": 800.0, "liger": 100.0, "clmap": 50.0}
    for n, v in ((4096, 32000), (16384, 32000), (16384, 128256)):
        for impl in times:
            scale = n / 4096 * v / 32000
            rows.append(
                {
                    **ENV,
                    "commit": "new",
                    "date": "2026-11-26T10:00:00Z",
                    "impl": impl,
                    "N": n,
                    "H": 4096,
                    "V": v,
                    "dtype": "bf16",
                    "pass": "fwd+bwd",
                    "median_ms": round(times[impl] * scale, 3),
                    "p20_ms": 0.9,
                    "p80_ms": 1.1,
                    "peak_extra_mb": mems[impl] * scale,
                }
            )
    # An older commit's row on the same device must not appear.
    rows.append({**rows[0], "commit": "old", "date": "2026-11-20T10:00:00Z", "median_ms": 999.25})
    return rows


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    res.mkdir()
    _write(res / "mapping_loss.csv", _mapping_rows())
    pooled = [
        {
            **ENV,
            "commit": "new",
            "date": "2026-11-26T10:00:00Z",
            "impl": impl,
            "pass": "fwd",
            "tokens": n,
            "hidden": 1024,
            "spans": 64,
            "dtype": "torch.bfloat16",
            "median_ms": n / 8192 * (0.5 if impl == "triton" else 2.0),
            "p20_ms": 0,
            "p80_ms": 0,
            "bytes": 1,
            "gbps": 100.0,
            "roofline_gbps": 3000.0,
            "frac_of_roofline": 0.03,
            "peak_mem_mb": 10,
        }
        for n in (8192, 32768)
        for impl in ("triton", "torch")
    ]
    _write(res / "pooled_similarity.csv", pooled)
    return res


def test_report_tables_and_plots(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\n\nintro\n\n{report.START}\nstale 12345\n{report.END}\n\ntail text\n")
    report.main(["--results", str(results), "--readme", str(readme)])
    text = readme.read_text()
    section = text.split(report.START)[1].split(report.END)[0]
    assert "stale 12345" not in section and text.startswith("# B\n\nintro") and "tail text" in text
    assert "### mapping_loss" in section and "### pooled_similarity" in section
    assert "NVIDIA H100 80GB HBM3" in section
    # Every CSV number of the latest commit is in the table, as written there; the older commit's is not.
    for r in _mapping_rows()[:-1]:
        line = (
            f"| {r['impl']} | {r['N']} | 4096 | {r['V']} | bf16 | fwd+bwd | {r['median_ms']} | 0.9 | 1.1 "
            f"| {r['peak_extra_mb']} |"
        )
        assert line in section, line
    assert "999.2" not in section
    # Ratios vs each peer: clmap 1.0 vs liger 2.0 → 0.5 in time, 50 vs 800 MB → 0.0625 in memory.
    assert "| 4096 | 4096 | 32000 | bf16 | fwd+bwd | liger | 0.500 | 0.500 |" in section
    assert "| 4096 | 4096 | 32000 | bf16 | fwd+bwd | naive | 0.250 | 0.062 |" in section
    assert "| 8192 | 1024 | 64 | torch.bfloat16 | fwd | torch | 0.250 |" in section
    plots = sorted(p.name for p in results.glob("*.png"))
    for what in (
        "mapping_loss_time_vs_N",
        "mapping_loss_time_vs_V",
        "mapping_loss_memory_vs_N",
        "mapping_loss_memory_vs_V",
        "pooled_similarity_time_vs_N",
    ):
        assert any(p.startswith(what) for p in plots), (what, plots)
    assert all((results / p).stat().st_size > 1000 for p in plots)
    # Regenerating is idempotent.
    report.main(["--results", str(results), "--readme", str(readme)])
    assert readme.read_text() == text


def test_report_merge_appends_suite_rows(results: Path, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    _write(
        suite / "train_throughput.csv",
        [
            {
                **ENV,
                "commit": "new",
                "date": "2026-11-26T11:00:00Z",
                "config": "100m",
                "nproc": 1,
                "clmap_tokens_per_s": 123456.5,
                "plain_tokens_per_s": 61728.25,
                "tokens_per_s_ratio": 2.0,
            }
        ],
    )
    _write(suite / "gpu_util.csv", [{"timestamp": "x", "utilization.gpu [%]": "90 %"}])
    readme = tmp_path / "README.md"
    report.main(["--results", str(results), "--readme", str(readme), "--merge", str(suite)])
    assert (results / "train_throughput.csv").exists() and not (results / "gpu_util.csv").exists()
    section = readme.read_text().split(report.START)[1]
    assert "| 100m | 1 |" in section and "| 123456.5 | 61728.25 | 2.0 |" in section


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_train_throughput_tiny_writes_every_side(tmp_path: Path) -> None:
    env = {**_env(), "CLMAP_BENCH_OUT": str(tmp_path / "out")}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.train_throughput",
        "--config",
        "tiny",
        "--impls",
        "clmap,ntp,titan,plain",
        "--device",
        "cpu",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--work",
        str(tmp_path / "work"),
        *TINY,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "failed" not in proc.stdout, proc.stdout[-3000:]
    rows = list(csv.DictReader((tmp_path / "out" / "train_throughput.csv").open()))
    assert len(rows) == 1
    row = rows[0]
    assert row["config"] == "tiny" and row["device"].startswith("CPU")
    for impl in ("clmap", "ntp", "titan", "plain"):
        assert float(row[f"{impl}_tokens_per_s"]) > 0, impl
        assert float(row[f"{impl}_peak_memory_gib"]) > 0 and row[f"{impl}_mfu"] == "", impl  # no MFU on CPU
    for impl, column in (("plain", "tokens_per_s_ratio"), ("ntp", "ntp_ratio"), ("titan", "titan_ratio")):
        expected = float(row["clmap_tokens_per_s"]) / float(row[f"{impl}_tokens_per_s"])
        assert float(row[column]) == pytest.approx(expected, rel=1e-2), column
    assert row["titan_loss"] == "torch_lce"  # this torch has F.linear_cross_entropy
    # the trainer's runs measured their steps and saved nothing (checkpoint.at_end=false, no export)
    runs = sorted((tmp_path / "work").glob("run_tiny_*"))
    assert len(runs) == 2 and all((r / "metrics.jsonl").is_file() for r in runs), runs
    assert not [p for r in runs for p in (r / "checkpoints").glob("step_*")] and not any(
        (r / "hf").exists() for r in runs
    )
    impls = [r["impl"] for r in csv.DictReader((tmp_path / "out" / "train_throughput_impl.csv").open())]
    assert impls == ["clmap", "ntp", "titan", "plain"]


def test_summarize_reads_the_measured_log_windows() -> None:
    from benchmarks.train_throughput import log_every, summarize

    assert log_every(16, 4) == 4 and log_every(10, 3) == 1 and log_every(8, 2) == 2
    window = {"tokens_per_s": 100.0, "data_time_share": 0.5, "peak_memory_gib": 1.0, "log_steps": 2}
    records = [
        {**window, "step": 2, "step_time_s": 9.0, "tokens_per_s": 1.0},  # warm-up window: not measured
        {**window, "step": 4, "step_time_s": 1.0},  # 2 steps of 1 s at 100 tok/s
        {**window, "step": 6, "step_time_s": 3.0, "tokens_per_s": 300.0, "data_time_share": 0.0},
        {**window, "step": 8, "step_time_s": 5.0, "peak_memory_gib": 9.0},  # profiled: after the measured
    ]
    out = summarize(records, warmup=2, steps=6)
    assert out["tokens_per_s"] == pytest.approx((200 + 1800) / 8)  # tokens over time, not a mean of rates
    assert out["step_time_s"] == pytest.approx(2.0) and out["data_time_share"] == pytest.approx(0.125)
    assert out["peak_memory_gib"] == 1.0 and out["mfu"] == ""
    old_commit = [{k: v for k, v in r.items() if k != "log_steps"} for r in records]  # one step per record
    assert summarize(old_commit, warmup=3, steps=6)["step_time_s"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no measured steps"):
        summarize(records[:1], warmup=2, steps=6)


def test_trace_busy_share_reads_kernel_intervals(tmp_path: Path) -> None:
    import json

    from benchmarks.train_throughput import trace_busy_share

    events = [
        {"cat": "kernel", "ts": 0, "dur": 10},
        {"cat": "gpu_memcpy", "ts": 5, "dur": 15},
        {"cat": "cpu_op", "ts": 0, "dur": 100},
        {"cat": "kernel", "ts": 30, "dur": 10},
    ]
    (tmp_path / "host.pt.trace.json").write_text(json.dumps({"traceEvents": events}))
    assert trace_busy_share(tmp_path) == pytest.approx(30 / 40)


def test_ab_names_a_missing_commit_and_extracts_a_present_one(tmp_path: Path) -> None:
    from benchmarks.train_throughput import ab_tree

    with pytest.raises(SystemExit, match="'0000000' is not in this checkout's .git .*--ab-export 0000000"):
        ab_tree("0000000", tmp_path)
    tree, label = ab_tree("2cca9d5", tmp_path)
    assert label == "2cca9d5" and (tree / "clmap" / "train.py").is_file()
    assert "def train_step(objective, optimizer, rows" in (tree / "clmap" / "train.py").read_text()
    assert ab_tree("HEAD", tmp_path)[0] == REPO


def test_unpack_row_restores_sequences() -> None:
    from benchmarks.baselines import pad_batch, unpack_row
    from clmap.data.stream import Row

    # pad == eos (0): the second sequence starts with the pad id, as a BOS-less (Qwen2) sequence does.
    ids = [1, 5, 6, 0, 0, 7, 0, 0, 0]
    tgt = [5, 6, 0, -100, 7, 0, -100, -100, -100]
    pos = [0, 1, 2, 3, 0, 1, 2, 0, 1]
    row = Row(ids, tgt, pos, [0] * 9, [], [], [4, 3])
    seqs = unpack_row(row)
    assert seqs == [([1, 5, 6, 0], [5, 6, 0, -100]), ([0, 7, 0], [7, 0, -100])]
    batch_ids, batch_tgt, mask = pad_batch(seqs, 0, "cpu")
    assert batch_ids.tolist() == [[1, 5, 6, 0], [0, 7, 0, 0]]
    assert batch_tgt[1].tolist() == [7, 0, -100, -100] and mask.sum().item() == 7


def _dry_run_suite(tmp_path: Path, expect_rc: int = 0, on_log=None, **env: str) -> tuple[Path, str]:
    """``gpu_suite.sh --dry-run`` into tmp_path/suite; returns that folder and the suite's log. ``on_log``
    is called with the log so far every half second while the suite runs."""
    out = tmp_path / "suite"
    env = {**_env(), "PYTHON": sys.executable, "TMPDIR": str(tmp_path), **env}
    console = tmp_path / "console.txt"
    with console.open("w") as sink:
        proc = subprocess.Popen(
            ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), str(out), "--dry-run"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 900
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the dry run ran past 900 s: {console.read_text()[-3000:]}")
            if on_log is not None and (out / "suite.log").exists():
                on_log((out / "suite.log").read_text())
            time.sleep(0.5)
    log = (out / "suite.log").read_text() if (out / "suite.log").exists() else console.read_text()
    assert proc.returncode == expect_rc, log[-6000:] + console.read_text()[-2000:]
    return out, log


def _processes_with(text: str) -> list[str]:
    """Ids of live processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


# The dry run's train_1b: its first implementation takes ~10-30 s here, the second never ends (a hung child,
# CLMAP_BENCH_HANG_IMPL); this budget leaves train_1b ~60 s (45 s are kept for mapping_target): the first
# implementation's row is written, then the step times out, whatever the machine's speed.
BUDGET_CUT_S, KEEP_S = 105, 45


def _step_order(log: str) -> list[str]:
    return [line.split()[1] for line in log.splitlines() if line.startswith("=== ") and "(timeout " in line]


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path: Path) -> None:
    out, log = _dry_run_suite(tmp_path)
    # issue 22's priorities first; the opt-in steps not run
    assert _step_order(log) == [
        "train_1b", "packing", "mapping_target", "gpu_check", "pooled_similarity", "mapping_sweep"
    ], log[-3000:]  # fmt: skip
    for name in ("gpu_check", "step_check", "mapping_loss", "pooled_similarity", "train_throughput"):
        rows = list(csv.DictReader((out / f"{name}.csv").open()))
        assert rows and all(r["device"] for r in rows), name
    assert all(r["ok"] == "True" for r in csv.DictReader((out / "gpu_check.csv").open()))
    steps = {r["check"]: r for r in csv.DictReader((out / "step_check.csv").open())}
    assert steps["step.compile"]["ok"] == "True" and "graph_breaks=0" in steps["step.compile"]["detail"]
    assert steps["step.host_syncs"]["ok"] == "True", steps["step.host_syncs"]["detail"]
    one_b = next(csv.DictReader((out / "train_throughput.csv").open()))
    assert one_b["config"] == "1b" and one_b["device"].startswith("CPU")
    for impl in ("clmap", "ntp", "titan"):
        assert float(one_b[f"{impl}_tokens_per_s"]) > 0, impl
    # a row per implementation too, written as each finished
    impls = [r["impl"] for r in csv.DictReader((out / "train_throughput_impl.csv").open())]
    assert impls == ["clmap", "ntp", "titan"]
    profiles = (out / "train_profiles.txt").read_text()
    assert "=== 1b clmap " in profiles and "=== 1b titan " in profiles
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 9, files
    assert "suite finished" in log and "0 step(s) not ok" in log
    assert "=== train_ab: not selected" in log and "=== ablation_gpu: not selected" in log


@pytest.mark.slow
def test_gpu_suite_budget_cut_kills_the_step_and_keeps_its_rows(tmp_path: Path) -> None:
    """A budget too small for the 1B trio: train_1b times out while an implementation runs; its whole
    process group is killed (no trainer outlives it), the rows it finished stay, the next step runs."""
    survivors: list[list[str]] = []

    def at_timeout(log: str) -> None:  # the moment the suite reports the timeout, before the next step
        if not survivors and "=== train_1b: TIMED OUT" in log:
            survivors.append(_processes_with(str(tmp_path / "clmap_suite.")))  # train_1b's --work folder

    out, log = _dry_run_suite(
        tmp_path,
        on_log=at_timeout,
        CLMAP_SUITE_ONLY="train_1b,mapping_target",
        CLMAP_SUITE_BUDGET_S=str(BUDGET_CUT_S),
        CLMAP_SUITE_MIN_STEP_S=str(KEEP_S),
        CLMAP_BENCH_HANG_IMPL="ntp",
        expect_rc=1,
    )
    assert _step_order(log) == ["train_1b", "mapping_target"], log[-3000:]
    assert "=== train_1b: TIMED OUT" in log and "=== mapping_target: ok" in log
    assert "step(s) not ok: train_1b:timeout" in log
    assert survivors == [[]], f"processes of the killed step still running: {survivors}"
    impls = [r["impl"] for r in csv.DictReader((out / "train_throughput_impl.csv").open())]
    assert impls == ["clmap"], impls
    assert not (out / "train_throughput.csv").exists()  # the trio's row needs all three
    assert list(csv.DictReader((out / "mapping_loss.csv").open()))


@pytest.mark.slow
def test_gpu_suite_runs_the_ablation_gpu_preset_alone(tmp_path: Path) -> None:
    out, log = _dry_run_suite(tmp_path, CLMAP_SUITE_ONLY="ablation_gpu")
    assert "=== gpu_check: not selected" in log and "=== ablation_gpu: ok" in log
    meta = json.loads((out / "ablation" / "ablation_results.json").read_text())["meta"]
    assert meta["base"].endswith("base_gpu.toml") and meta["main_budget"] == 2
    writeup = (out / "ablation" / "ablation.md").read_text()
    assert "--preset gpu" in writeup.split("<!-- ablation:run -->", 1)[1].split("<!-- /ablation:run -->")[0]
    assert (out / "ablation" / "ablation_scale.png").stat().st_size > 0


def test_mfu_both_ways_counts_full_rows_and_document_causal_pairs() -> None:
    """torchtitan's MFU counts every key of the row for every token (T per token); the document-causal
    one counts n·(n+1)/2 pairs per document: a row of documents 3 and 5 long does 21 pairs, not 64."""
    from types import SimpleNamespace

    from clmap.metrics import attention_flops_per_pair, causal_pairs, mfu

    config = SimpleNamespace(num_attention_heads=4, hidden_size=32, num_hidden_layers=2, head_dim=None)
    per_pair = attention_flops_per_pair(SimpleNamespace(config=config))
    assert per_pair == 12 * 2 * 4 * 8  # 12 · L · H · Q
    assert causal_pairs([3, 5]) == 6 + 15
    dense, seq_len, peak = 1000.0, 8, 1e6
    flops_tok = dense + per_pair * seq_len
    titan, doc = mfu(8, causal_pairs([3, 5]), 2.0, flops_tok, per_pair, seq_len, peak)
    assert titan == pytest.approx(8 * flops_tok / 2.0 / peak)
    assert doc == pytest.approx((8 * dense + 21 * per_pair) / 2.0 / peak)
    assert mfu(8, None, 2.0, flops_tok, per_pair, seq_len, peak) == (titan, None)
