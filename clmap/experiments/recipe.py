"""The ablation's runs: what is trained, from what, for how long, and how each run is evaluated.

Two protocols share the variant files of ``configs/ablation/`` (each a few overrides of the shared
``base.toml``):

- ``continue`` (the paper's): stage 1 trains one base model NTP-only (``stages/stage1.toml``:
  monolingual text plus each side of every pair as its own document); stage 2 continues every variant
  from that base (``stages/stage2.toml``, ``model.init_from``) with the same budget, seed and tokenizer.
  Stage 2 warms up and then keeps the learning rate constant, so a run of N steps is exactly the first
  N steps of a longer one: the scale curve's shorter budgets are checkpoints of one long run per
  variant, exported and evaluated like any run.
- ``scratch`` (the earlier recipe): every variant trained from random weights for ``--steps``.

Every run is evaluated once per prompt format it is compared in (:func:`prompt_formats`); one
evaluator call scores all splits (in-domain ``test`` and out-of-domain ``ood``) at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from clmap.evaluate.tasks import PROMPTED_TASKS
from clmap.launch import train_command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "ablation"
VARIANTS = ("ntp_only", "parallel_text", "cl_both", "cl_map", "cl_forward", "placebo")
LABELS = {
    "base": "base model (stage 1)",
    "pretrained": "pretrained model (no continued training)",
    "ntp_only": "(a) NTP only",
    "parallel_text": "(b) NTP + parallel as text",
    "cl_both": "(c) NTP + CL both ways",
    "cl_map": "(d) NTP + CL + map",
    "cl_forward": "(e) NTP + CL one way",
    "placebo": "(f) placebo: (d) on shuffled pairs",
    "cl_map_centered": "(d') (d) with the centred map term",
}
BASELINES = ("ntp_only", "parallel_text", "placebo")  # placebo: what the relation adds to the format
_EXPORT_LOCK = threading.Lock()
# Settings of the recipe per machine; every one can be overridden on the command line.
PRESETS: dict[str, dict] = {
    "cpu": {  # 2 CPU cores: stage 1 as 2 processes, then two single-threaded runs at a time (measured faster)
        "base": str(CONFIG_DIR / "base.toml"),
        "stem": "ablation",
        "variants": ",".join(VARIANTS),
        "scale_variants": "ntp_only,cl_map",
        "base_steps": 2400,
        "budgets": "150,600,2400",
        "main_budget": 600,
        "stage_lr": "3e-3,1e-3",
        "seeds": "0,1,2",
        "device": "cpu",
        "jobs": 2,
        "threads": 1,
        "base_nproc": 2,
        "base_threads": 1,
        "eval_limit": 256,  # choice, LAC and perplexity; MT's generation costs more, so 128
        "eval_task_limit": "mt=128",
        "eval_batch_size": 16,
        "pairs": "en-cs,cs-uk,zh-ja",
        "max_new_tokens": 32,
    },
    "gpu": {  # one GPU: a ~100M-parameter model, four runs sharing the device; the same ratios of budgets
        "base": str(CONFIG_DIR / "base_gpu.toml"),
        "stem": "ablation",
        "variants": ",".join(VARIANTS),
        "scale_variants": "ntp_only,cl_map",
        "base_steps": 1200,
        "budgets": "75,300,1200",
        "main_budget": 300,
        "stage_lr": "6e-4,3e-4",
        "seeds": "0,1,2",
        "device": "cuda",
        "jobs": 4,
        "threads": 1,
        "base_nproc": 1,
        "base_threads": 4,
        "eval_limit": 64,
        "eval_batch_size": 64,
        "pairs": "en-cs,cs-uk,zh-ja",
        "max_new_tokens": 48,
    },
    "gemma": {  # the pretrained Gemma 3 270M continued on 2 CPU cores: no stage 1, one run at a time
        "base": str(CONFIG_DIR / "base_gemma.toml"),
        "stem": "ablation_gemma",
        "variants": "ntp_only,parallel_text,cl_map,cl_map_centered,placebo",
        "scale_variants": "",
        "base_steps": 0,
        "budgets": "24",
        "main_budget": 24,
        "pairs": "en-cs,zh-ja",
        "stage_lr": "0,2e-5",  # stage 1 unused
        # before the command line's --set: stages/stage2.toml's 30 warm-up steps are longer than this budget
        "set": ["optim.warmup_steps=4", "checkpoint.every=12"],
        "seeds": "0",
        "device": "cpu",
        "jobs": 1,
        "threads": 2,
        "base_nproc": 1,
        "base_threads": 2,
        "eval_limit": 16,
        "eval_batch_size": 8,
        "max_new_tokens": 20,
    },
}


# -- configuration --------------------------------------------------------------------------------
def flatten(tree: dict, prefix: str = "") -> list[str]:
    """A TOML table as ``--section.key=value`` overrides (lists comma-joined, as the trainer parses)."""
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten(value, f"{name}.")
        elif isinstance(value, list):
            out.append(f"--{name}={','.join(str(v) for v in value)}")
        elif isinstance(value, bool):
            out.append(f"--{name}={str(value).lower()}")
        else:
            out.append(f"--{name}={value}")
    return out


def variant_overrides(variant: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    path = config_dir / f"{variant}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.toml") if not p.stem.startswith("base"))
        raise FileNotFoundError(f"{path}: no such variant; known: {', '.join(known)}")
    return flatten(tomllib.loads(path.read_text()))


def stage_overrides(stage: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The overrides of ``stages/stage1.toml`` (the base model) or ``stages/stage2.toml`` (continuing)."""
    path = config_dir / "stages" / f"{stage}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {stage} settings of the continue protocol are missing")
    return flatten(tomllib.loads(path.read_text()))


def prompt_formats(cfg) -> tuple[str, ...]:
    """The prompt formats a run is scored in, its own first: a run trained on the mapping task (λ_CL > 0
    with language tags) in the mapping format and, for the comparison both ways, the text template;
    every other run (base model, NTP only, pairs as text) in the text template only."""
    if cfg.objective.lambda_cl > 0 and cfg.data.ntp_share < 1.0 and not cfg.data.parallel_as_text:
        return ("mapping", "template")
    return ("template",)


@dataclass
class Run:
    """One trained (or exported) model of the recipe and the evaluations it gets."""

    variant: str
    seed: int
    steps: int  # its own budget: stage-2 steps, or all steps for the base model and from-scratch runs
    run_dir: Path
    overrides: list[str]  # the trainer's; empty for a checkpoint of a longer run
    stage: str  # "base" (stage 1), "continue" (stage 2) or "scratch"
    formats: tuple[str, ...]
    parent: Run | None = None  # for a checkpoint: the longer run it is taken from, at step ``steps``
    children: list[Run] = field(default_factory=list)  # checkpoints of this run that are evaluated
    out: Path | None = None  # the recipe's folder, where a pretrained model outside it is evaluated into

    @property
    def name(self) -> str:
        return "pretrained" if self.stage == "pretrained" else self.run_dir.name

    @property
    def model_dir(self) -> Path:
        """The model an evaluation scores (a pretrained model's own folder, a trained run's ``hf/``): a
        report older than its config.json is stale."""
        return self.run_dir if self.stage == "pretrained" else self.run_dir / "hf"

    def eval_dir(self, prompt_format: str) -> Path:
        return (self.out or self.run_dir.parent) / "eval" / self.name / prompt_format


def _config(args: argparse.Namespace, overrides: list[str]):
    from clmap.config import load_config

    return load_config(args.base, overrides)  # fail before hours of training, not after


def plan_runs(args: argparse.Namespace, tokenizer: Path | None) -> list[Run]:
    """Every run of the protocol with its full override list, checked against the config schema."""
    out, config_dir = Path(args.out), Path(args.config_dir)
    extra = [f"--{s}" for s in args.set]
    shared = [f"--tokenizer.path={tokenizer}"] if tokenizer is not None else []
    runs: list[Run] = []
    if args.protocol == "scratch":
        for seed in args.seeds:
            for variant in args.variants:
                run_dir = out / f"{variant}_s{seed}"
                overrides = [*variant_overrides(variant, config_dir), *extra, f"--run_dir={run_dir}"]
                overrides += [f"--train.seed={seed}", *shared]
                overrides += [f"--train.steps={args.steps}"] if args.steps else []
                cfg = _config(args, overrides)
                runs.append(
                    Run(variant, seed, cfg.train.steps, run_dir, overrides, "scratch", prompt_formats(cfg))
                )
        return runs
    lr1, lr2 = args.stage_lr
    stage2 = [*stage_overrides("stage2", config_dir), f"--optim.lr={lr2}"]
    if args.base_steps:  # stage 1 trains the base; else the base is the pretrained model.path itself
        base_dir = out / "base"
        overrides = [*stage_overrides("stage1", config_dir), f"--optim.lr={lr1}", *extra]
        overrides += [f"--run_dir={base_dir}", "--train.seed=0", f"--train.steps={args.base_steps}", *shared]
        cfg = _config(args, overrides)
        runs.append(Run("base", 0, args.base_steps, base_dir, overrides, "base", prompt_formats(cfg)))
        stage2.append(f"--model.init_from={base_dir}")
    elif not (pretrained := _config(args, extra).model.path):
        raise ValueError("--base-steps 0 continues a pretrained model: set model.path (--set model.path=DIR)")
    else:  # the pretrained model itself is a row of the tables, evaluated as it is
        stage2 += shared
        model = Path(pretrained) if Path(pretrained).is_absolute() else REPO / pretrained
        runs.append(Run("pretrained", 0, 0, model, [], "pretrained", ("template",), out=out))
    longest = max(args.budgets)
    every = math.gcd(*args.budgets, args.main_budget)
    for seed in args.seeds:
        for variant in args.variants:
            scale = variant in args.scale_variants and seed == args.seeds[0]
            steps = longest if scale else args.main_budget
            run_dir = out / f"{variant}_s{seed}_{steps}"
            overrides = [*variant_overrides(variant, config_dir), *stage2, *extra, f"--run_dir={run_dir}"]
            overrides += [f"--train.seed={seed}", f"--train.steps={steps}"]
            if scale:  # keep a checkpoint at every budget of the curve
                overrides += [f"--checkpoint.every={every}", f"--checkpoint.keep={longest // every + 1}"]
            cfg = _config(args, overrides)
            run = Run(variant, seed, steps, run_dir, overrides, "continue", prompt_formats(cfg))
            for budget in sorted({*args.budgets, args.main_budget} - {longest}) if scale else []:
                child = Run(
                    variant, seed, budget, out / f"{variant}_s{seed}_{budget}", [], "continue", run.formats
                )
                child.parent = run
                run.children.append(child)
            runs += [run, *run.children]
    return runs


def use_stores(runs: Sequence[Run], args: argparse.Namespace, tokenizer: Path | None) -> None:
    """``--stores DIR``: every trained run reads token stores instead of the corpus files, through
    ``data.store``: ``DIR/documents`` for stage 1 (``data.parallel_as_mono``: pair sides as documents)
    and ``DIR/pairs`` for the others, each built here from the run's config with the shared tokenizer
    (``clmap.data.store build --config``: a finished store is kept, an unfinished one continued)."""
    from clmap.data.store import build_config_stores

    built: set[tuple] = set()
    for run in runs:
        if not run.overrides:  # a checkpoint of a longer run, or the pretrained model itself
            continue
        cfg = _config(args, run.overrides)
        folder = Path(args.stores).resolve() / ("documents" if cfg.data.parallel_as_mono else "pairs")
        key = (folder, tuple(cfg.data.languages), tuple(cfg.data.pairs))
        if key not in built:
            cfg.tokenizer.path = str(tokenizer) if tokenizer is not None else cfg.tokenizer.path
            print(f"[ablation] token stores for {run.name}: {folder}", flush=True)
            build_config_stores(cfg, folder)
            built.add(key)
        run.overrides.append(f"--data.store={folder}")
        _config(args, run.overrides)


# -- steps of the recipe ----------------------------------------------------------------------------
def shared_tokenizer(args: argparse.Namespace) -> Path | None:
    """The tokenizer every run uses: ``--tokenizer``, the base model's own, or one trained here once on
    the base config's training split (monolingual and parallel text, as the trainer would)."""
    from clmap.config import load_config

    if args.tokenizer:
        return Path(args.tokenizer).resolve()
    cfg = load_config(args.base, [f"--{s}" for s in args.set])
    if cfg.tokenizer.path or cfg.model.path:
        return None  # a pretrained model brings its tokenizer; every variant loads the same one
    out = Path(args.out) / "tokenizer"
    if (out / "tokenizer.model").is_file():
        return out.resolve()
    from clmap.data.pipeline import load_texts, sample_texts
    from clmap.data.tokenizer import train_sentencepiece

    cfg.data.ntp_share = 0.5  # both kinds of text, whatever the variant
    mono, parallel = load_texts(cfg, "train")
    columns = [*mono.values(), *(side for sides in parallel.values() for side in sides)]
    sample = sample_texts(columns, cfg.tokenizer.train_sentences, seed=0)
    print(f"[ablation] training the shared tokenizer on {len(sample)} texts -> {out}", flush=True)
    train_sentencepiece(sample, out, cfg.data.languages, vocab_size=cfg.tokenizer.vocab_size)
    return out.resolve()


def _env(threads: int, training: bool) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if training:
        env.pop("TRITON_INTERPRET", None)  # training on the CPU takes the chunked PyTorch path
    return env


def _call(cmd: list[str], log: Path, threads: int, training: bool, verbose: bool) -> float:
    """Run one trainer/evaluator process with its output in ``log``; returns its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as sink:
        out = None if verbose else sink
        proc = subprocess.run(cmd, cwd=REPO, env=_env(threads, training), stdout=out, stderr=out)
    if proc.returncode != 0:
        tail = "" if verbose else "\n" + "".join(log.read_text(encoding="utf-8").splitlines(True)[-20:])
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}); log: {log}{tail}")
    seconds = time.perf_counter() - t0
    print(f"[ablation] {log.relative_to(log.parents[1])}: done in {seconds:.0f} s", flush=True)
    return seconds


def _check_same_config(run: Run, base: str) -> None:
    """A finished run is reused only if it was trained with exactly the config this recipe asks for."""
    from clmap.config import load_config

    saved = json.loads((run.run_dir / "config.json").read_text())
    cfg = load_config(base, run.overrides)
    if cfg.model.init_from:  # the trainer records the source tokenizer's size, as it trained with it
        from clmap.data.pipeline import init_vocabulary

        cfg.tokenizer.vocab_size = init_vocabulary(cfg, run.run_dir)
    wanted = json.loads(json.dumps(cfg.to_dict()))
    if saved != wanted:
        diff = sorted(
            f"{section}.{key}"
            for section, values in wanted.items()
            if isinstance(values, dict)
            for key in values
            if saved.get(section, {}).get(key) != values[key]
        )
        raise RuntimeError(
            f"{run.run_dir} was trained with another config ({', '.join(diff) or 'run_dir'}); "
            "pass --overwrite to retrain it"
        )


def _prepare(run: Run, args: argparse.Namespace) -> bool:
    """Whether ``run`` must be (re)made: False for a finished run that is reused."""
    if not run.run_dir.exists():
        return True
    if args.overwrite:
        shutil.rmtree(run.run_dir)
        return True
    if not args.skip_existing:
        raise RuntimeError(f"{run.run_dir} exists: pass --skip-existing to reuse/resume it or --overwrite")
    if not (run.run_dir / "hf" / "config.json").is_file():
        return True  # unfinished: the trainer resumes from its own checkpoint
    if run.parent is None:
        _check_same_config(run, args.base)
    print(f"[ablation] {run.name}: finished run reused", flush=True)
    return False


def train(run: Run, args: argparse.Namespace, nproc: int = 1, threads: int = 1) -> float:
    """Train one run (or resume / skip it); a checkpoint of a longer run is exported instead."""
    if not _prepare(run, args):
        return 0.0
    if run.parent is not None:
        t0 = time.perf_counter()
        with _EXPORT_LOCK:  # in-process, one at a time: lazy imports and model building are not thread-safe
            export_checkpoint(run.parent.run_dir, run.steps, run.run_dir)
        return time.perf_counter() - t0
    cmd = train_command(nproc, ["--config", str(args.base), *run.overrides])
    print(f"[ablation] {run.name}: {' '.join(cmd[1:])}", flush=True)
    return _call(cmd, run.run_dir.with_suffix(".log"), threads, True, args.verbose)


def export_checkpoint(parent_dir: Path, step: int, out_dir: Path) -> Path:
    """``parent_dir``'s checkpoint at ``step`` as a run folder of its own (``hf/`` with the finished
    run's config and tokenizer, the checkpoint's weights; config.json with ``train.steps = step``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from clmap.checkpoint import Checkpointer, load_model_weights

    checkpoint = parent_dir / "checkpoints" / f"step_{step:08d}"
    if not Checkpointer.is_complete(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no complete checkpoint at step {step} of {parent_dir}")
    torch.set_num_threads(1)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(parent_dir / "hf", tmp / "hf")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp / "hf"), dtype=torch.float32)
    load_model_weights(model, checkpoint)
    model.save_pretrained(tmp / "hf")
    config = json.loads((parent_dir / "config.json").read_text())
    config["train"]["steps"] = step
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out_dir)
    return out_dir


def evaluator_options(prompt_format: str, splits: Sequence[str]) -> list[str]:
    """The evaluator's options for one (run, prompt format) call over all splits."""
    return ["--prompt-format", prompt_format, "--split", ",".join(splits)]


def evaluate(run: Run, prompt_format: str, args: argparse.Namespace) -> tuple[Path, float]:
    """One evaluator call for ``run`` in ``prompt_format`` into ``out/eval/<run>/<format>``: every task
    for the run's own format, MT and translation choice only for the second; the same test items for
    every run (evaluation seed 0)."""
    own = prompt_format == run.formats[0]
    tasks = args.tasks if own else ",".join(t for t in args.tasks.split(",") if t in PROMPTED_TASKS)
    out = run.eval_dir(prompt_format)
    report = out / "report.json"
    if report.is_file() and not args.overwrite:
        settings = json.loads(report.read_text())["settings"]
        wanted = (
            tasks,
            args.pairs,
            args.eval_limit,
            args.eval_task_limit,
            ",".join(args.splits),
            prompt_format,
        )
        if (
            settings.get("tasks"),
            settings.get("pairs"),
            settings.get("limit"),
            settings.get("task_limit") or {},
            settings.get("split"),
            settings.get("prompt_format"),
        ) == wanted:
            if report.stat().st_mtime >= (run.model_dir / "config.json").stat().st_mtime:
                print(f"[ablation] {run.name}: {prompt_format} evaluation reused", flush=True)
                return report, 0.0
    cmd = [sys.executable, "-m", "clmap.evaluate", "--checkpoint", str(run.run_dir), "--out", str(out)]
    cmd += ["--tasks", tasks, "--pairs", args.pairs, "--device", args.device, "--seed", "0"]
    cmd += ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.eval_batch_size)]
    cmd += evaluator_options(prompt_format, args.splits)
    cmd += ["--limit", str(args.eval_limit)] if args.eval_limit else []
    if args.eval_task_limit:
        cmd += ["--task-limit", ",".join(f"{task}={n}" for task, n in args.eval_task_limit.items())]
    for entry in args.data:
        cmd += ["--data", entry]
    print(f"[ablation] {run.name}: evaluating ({prompt_format})", flush=True)
    return report, _call(cmd, out.parent / f"{prompt_format}.log", args.threads, False, args.verbose)


def execute(runs: Sequence[Run], args: argparse.Namespace) -> dict[str, dict[str, Path]]:
    """Train and evaluate every run: the base model first on all cores, then ``args.jobs`` independent
    chains at a time (a run, its exported checkpoints, their evaluations), longest first, the base's
    evaluation last. Returns run name → prompt format → report.json; adds the job seconds to
    ``args.timing``."""
    reports: dict[str, dict[str, Path]] = {}
    lock = threading.Lock()

    def timed(kind: str, seconds: float) -> None:
        """Job seconds by kind; a reused run or evaluation (0 s) is counted as such, so the write-up can
        say how much of the recipe this invocation did."""
        with lock:
            args.timing[kind] = args.timing.get(kind, 0.0) + seconds
            args.timing[f"{kind}_jobs"] = args.timing.get(f"{kind}_jobs", 0) + 1
            args.timing[f"{kind}_reused"] = args.timing.get(f"{kind}_reused", 0) + (seconds == 0.0)

    def evaluate_all(run: Run) -> None:
        for prompt_format in run.formats:
            report, seconds = evaluate(run, prompt_format, args)
            reports.setdefault(run.name, {})[prompt_format] = report
            timed("eval", seconds)

    def chain(run: Run) -> None:
        if run.stage not in ("base", "pretrained"):  # the base is trained first; a pretrained one not at all
            timed("train", train(run, args, args.nproc, args.threads))
        for child in run.children:
            timed("train", train(child, args))
            evaluate_all(child)
        evaluate_all(run)

    first = [r for r in runs if r.stage == "base"]
    rest = sorted((r for r in runs if r.stage != "base" and r.parent is None), key=lambda r: -r.steps)
    for run in first:
        timed("train", train(run, args, args.base_nproc, args.base_threads))
    parallel_map(chain, [*rest, *first], args.jobs)
    return {r.name: reports[r.name] for r in runs}


def parallel_map(fn: Callable[[Run], None], items: Sequence[Run], jobs: int) -> None:
    """``fn`` over ``items``, ``jobs`` at a time (threads that each wait on a subprocess); the first
    failure cancels what has not started and is raised once the running ones end."""
    if jobs <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, item) for item in items]
        for future in futures:
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()
