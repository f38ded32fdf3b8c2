"""Training entry point.

``torchrun --nproc_per_node=N -m clmap.train --config configs/tiny.toml [--section.key=value ...]``

Also runs as one process (``python -m clmap.train``). The whole optimizer step is ``train_step``.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from clmap.checkpoint import Checkpointer, export_hf, load_model_weights
from clmap.config import Config, check_batch, config_help, load_config
from clmap.data.examples import IGNORE_INDEX, GroupTable
from clmap.data.pipeline import dev_rows, load_texts, make_stream, prepare_tokenizer
from clmap.data.stream import Row, collate
from clmap.metrics import MetricLogger, flops_per_token, peak_flops, peak_memory_gib
from clmap.model import build_model, count_parameters, decoder_layers
from clmap.objectives import MappingObjective, ObjectiveOutput, loss_coefficients, summarize_totals
from clmap.parallel import DistInfo, all_reduce_sum, cleanup, init_distributed, shard_model


# -- optimisation -------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, cfg: Config):
    """AdamW (no decay on norms and biases) with linear warm-up then cosine decay to min_lr_ratio."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        foreach=True,
    )

    def schedule(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.train.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def step_counts(rows: list[Row], num_groups: int) -> tuple[torch.Tensor, float]:
    """Target tokens per group and pairs in the whole step (every rank sees every row's metadata)."""
    counts = torch.zeros(num_groups, dtype=torch.float64)
    for row in rows:
        targets, groups = torch.tensor(row.targets), torch.tensor(row.groups)
        counts.index_add_(
            0,
            groups[targets != IGNORE_INDEX],
            torch.ones(int((targets != IGNORE_INDEX).sum()), dtype=torch.float64),
        )
    return counts, float(sum(len(row.pairs) for row in rows))


def train_step(objective, optimizer, rows: list[Row], cfg: Config, table: GroupTable, dist_info: DistInfo):
    """One optimizer step over the global batch ``rows``: this rank's share, in micro-batches.

    Loss weights come from the whole step's counts, and the loss is scaled by the world size because
    FSDP averages gradients over ranks: the gradient is then exactly that of the global-batch mean.
    Returns the reduced sums (for metrics) and whether the step was applied.
    """
    counts, num_pairs = step_counts(rows, len(table))
    coef, map_coef = loss_coefficients(table, counts, num_pairs, cfg.objective)
    coef = coef.to(dist_info.device)
    per_rank = len(rows) // dist_info.world_size
    mine = rows[dist_info.rank * per_rank : (dist_info.rank + 1) * per_rank]
    micro = [mine[i : i + cfg.train.micro_batch] for i in range(0, len(mine), cfg.train.micro_batch)]
    sums = ObjectiveOutput.zero_totals(len(table), dist_info.device)
    for i, chunk in enumerate(micro):
        objective.set_requires_gradient_sync(i == len(micro) - 1)
        out = objective(**collate(chunk, dist_info.device), group_weights=coef)
        loss = out.weighted_loss + map_coef * out.map_sum
        (loss * dist_info.world_size).backward()
        sums += out.totals()
    all_reduce_sum(sums)
    finite = bool(torch.isfinite(sums).all())
    grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.optim.grad_clip or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    finite = finite and bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums.cpu(), float(grad_norm), finite


@torch.no_grad()
def dev_metrics(objective, dev_rows: list[Row], cfg: Config, table: GroupTable, dist_info: DistInfo) -> dict:
    """Dev loss per task and group on fixed dev rows, and LAC per language pair from the same forward.

    The source span of ``<bos> x <2b> y`` is an encoding of x alone (causal attention), so the pooled
    spans of the two directions of each dev pair are exactly the sentence encodings LAC compares.
    """
    from clmap.evaluate.alignment import language_alignment_coefficient, similarity_matrix

    objective.eval()
    sums = ObjectiveOutput.zero_totals(len(table), dist_info.device)
    pooled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    mine = dev_rows[dist_info.rank :: dist_info.world_size]
    for i in range(0, len(mine), cfg.train.micro_batch):
        batch = collate(mine[i : i + cfg.train.micro_batch], dist_info.device)
        out = objective(**batch, return_pooled=True)
        sums += out.totals()
        if out.pooled_a is not None:
            pair_group = batch["groups"].flatten()[batch["span_starts"][batch["pair_a"]]]
            pooled.append((pair_group.cpu(), out.pooled_a.float().cpu(), out.pooled_b.float().cpu()))
    all_reduce_sum(sums)
    objective.train()
    metrics = {f"dev/{k}": v for k, v in summarize_totals(table, sums, cfg.objective).items()}
    gathered = [pooled]
    if dist.is_initialized() and dist_info.world_size > 1:
        gathered = [None] * dist_info.world_size
        dist.all_gather_object(gathered, pooled)
    parts = [p for rank_parts in gathered for p in rank_parts]
    if parts:
        groups, u, v = (torch.cat(x) for x in zip(*parts, strict=True))
        for group in groups.unique().tolist():
            mask = groups == group
            if int(mask.sum()) >= 2:
                lac, _, _ = language_alignment_coefficient(similarity_matrix(u[mask], v[mask]), n_boot=0)
                metrics[f"dev/lac/{table.names[group].removeprefix('cl:').replace('>', '-')}"] = lac
    return metrics


# -- main ---------------------------------------------------------------------------------------
class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint after the current step and exits cleanly."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        flag = torch.tensor([float(self.requested)], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def resume(checkpointer: Checkpointer, cfg: Config, objective, optimizer, scheduler, main: bool):
    """Load the latest complete checkpoint if resuming: (step, rows consumed, non-finite steps so far)."""
    latest = checkpointer.latest() if cfg.checkpoint.resume else None
    if latest is None:
        return 0, 0, 0
    state = checkpointer.load(latest, objective, optimizer, scheduler)
    if main:
        print(f"resumed from {latest} (step {state['step']})", flush=True)
    return state["step"], state["rows"], state.get("nonfinite_total", 0)


class StepMetrics:
    """The metrics of one step: losses per task and group, lr, gradient norm, tokens/s, MFU, memory, and
    the share of the step spent waiting for data. Holds what does not change between steps."""

    def __init__(self, cfg: Config, table: GroupTable, pad_id: int, lm, num_params: int, dist_info: DistInfo):
        self.cfg, self.table, self.pad_id, self.dist_info = cfg, table, pad_id, dist_info
        self.peak = peak_flops(dist_info.device)
        self.flops_per_token = flops_per_token(
            num_params, len(decoder_layers(lm)), lm.config.hidden_size, cfg.data.seq_len
        )

    def __call__(
        self,
        sums: torch.Tensor,
        rows: list[Row],
        scheduler,
        grad_norm: float,
        applied: bool,
        nonfinite_total: int,
        data_time: float,
        elapsed: float,
    ) -> dict:
        metrics = summarize_totals(self.table, sums, self.cfg.objective)
        tokens = sum(sum(1 for p in r.input_ids if p != self.pad_id) for r in rows)
        metrics.update(
            {
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens_per_s": tokens / elapsed,
                "step_time_s": elapsed,
                "data_time_share": data_time / elapsed,
                "peak_memory_gib": peak_memory_gib(self.dist_info.device),
                "nonfinite_total": nonfinite_total,
                "skipped": 0.0 if applied else 1.0,
            }
        )
        if self.peak:
            metrics["mfu"] = tokens * self.flops_per_token / elapsed / (self.peak * self.dist_info.world_size)
        return metrics


def run(cfg: Config) -> Path:
    import datasets

    datasets.disable_progress_bars()  # the trainer's own bar is the one that matters
    dist_info = init_distributed(cfg.train.device, cfg.train.backend)
    torch.manual_seed(cfg.train.seed)
    run_dir = Path(cfg.run_dir)
    main = dist_info.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
    check_batch(cfg.train, dist_info.world_size)

    mono, parallel = load_texts(cfg, "train")
    tok = prepare_tokenizer(cfg, run_dir, dist_info, mono, parallel)
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    stream = make_stream(cfg, tok, table, mono, parallel, cfg.train.seed)
    dev = dev_rows(cfg, tok, table, dist_info.world_size)

    lm = build_model(cfg.model, tok, dist_info.device)
    if cfg.model.init_from and not (cfg.checkpoint.resume and Checkpointer(run_dir, dist_info).latest()):
        loaded = load_model_weights(lm, cfg.model.init_from)  # weights only: a new optimizer and schedule
        if main:
            print(f"initialised from {loaded}", flush=True)
    num_params = count_parameters(lm)
    objective = MappingObjective(lm, table, cfg.objective).to(dist_info.device)
    objective = shard_model(
        objective, dist_info.device, cfg.train.mixed_precision, cfg.train.activation_checkpointing
    )
    optimizer, scheduler = build_optimizer(objective, cfg)
    checkpointer = Checkpointer(run_dir, dist_info, keep=cfg.checkpoint.keep)
    start_step, rows_done, nonfinite_total = resume(checkpointer, cfg, objective, optimizer, scheduler, main)

    logger = MetricLogger(run_dir, enabled=main, tensorboard=cfg.metrics.tensorboard)
    preemption = _Preemption()
    step_metrics = StepMetrics(cfg, table, tok.pad_id, lm, num_params, dist_info)
    if main:
        print(
            f"model: {num_params / 1e6:.2f}M parameters, {len(table)} loss groups, world size "
            f"{dist_info.world_size}, device {dist_info.device}, run folder {run_dir}",
            flush=True,
        )

    profiler = _profiler(cfg, run_dir) if cfg.profile.enabled else nullcontext()
    rows_iter = stream.rows(rows_done)
    bar = tqdm(
        total=cfg.train.steps,
        initial=start_step,
        disable=not (main and cfg.metrics.progress),
        desc="train",
        dynamic_ncols=True,
    )
    nonfinite_in_a_row = 0
    step = start_step
    with profiler as prof:
        while step < cfg.train.steps:
            # data: the step's global batch; every rank draws the same rows and keeps its share
            t0 = time.perf_counter()
            rows = [next(rows_iter) for _ in range(cfg.train.global_batch)]
            t_data = time.perf_counter() - t0
            # step: forward/backward over micro-batches, clip, update (skipped if non-finite)
            sums, grad_norm, applied = train_step(objective, optimizer, rows, cfg, table, dist_info)
            scheduler.step()
            step += 1
            rows_done += len(rows)
            if prof is not None:
                prof.step()
            elapsed = time.perf_counter() - t0
            nonfinite_in_a_row = 0 if applied else nonfinite_in_a_row + 1
            nonfinite_total += 0 if applied else 1
            if nonfinite_in_a_row > cfg.train.max_nonfinite_in_a_row:
                raise FloatingPointError(
                    f"{nonfinite_in_a_row} non-finite losses in a row (limit train.max_nonfinite_in_a_row="
                    f"{cfg.train.max_nonfinite_in_a_row}); last good checkpoint: {checkpointer.latest()}"
                )
            # log: losses and throughput every log_every steps and at the end
            if step % cfg.metrics.log_every == 0 or step == cfg.train.steps:
                metrics = step_metrics(
                    sums, rows, scheduler, grad_norm, applied, nonfinite_total, t_data, elapsed
                )
                # eval: dev loss per task and LAC every eval_every steps, logged with the step's metrics
                if cfg.metrics.eval_every and dev and step % cfg.metrics.eval_every == 0:
                    metrics.update(dev_metrics(objective, dev, cfg, table, dist_info))
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss/total']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            bar.update(1)
            # checkpoint: every checkpoint.every steps, at the end, and when any rank got SIGTERM
            stop = preemption.agreed(dist_info.device)
            if step % cfg.checkpoint.every == 0 or step == cfg.train.steps or stop:
                extra = {"rows": rows_done, "nonfinite_total": nonfinite_total}
                checkpointer.save(step, objective, optimizer, scheduler, extra)
            # preemption: after that checkpoint, leave cleanly
            if stop:
                if main:
                    print(f"\nSIGTERM: checkpoint saved at step {step}; exiting", flush=True)
                break
    bar.close()
    logger.close()
    if step >= cfg.train.steps and cfg.checkpoint.export_hf:
        export_hf(objective, tok, run_dir / "hf", dist_info)
        if main:
            print(f"exported Hugging Face model to {run_dir / 'hf'}", flush=True)
    cleanup()
    return run_dir


def _profiler(cfg: Config, run_dir: Path):
    """torch.profiler over a few steps: a Chrome/TensorBoard trace and a text summary of the top ops."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    out = run_dir / "profile"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    def on_ready(prof):
        tensorboard_trace_handler(str(out))(prof)
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        (out / "summary.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=25))

    p = cfg.profile
    return profile(
        activities=activities,
        schedule=schedule(wait=p.wait, warmup=p.warmup, active=p.active, repeat=1),
        on_trace_ready=on_ready,
        record_shapes=True,
        profile_memory=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config fields (defaults before --config), each overridable as --section.key=value:\n"
        + config_help(),
    )
    parser.add_argument("--config", default=None, help="TOML preset, e.g. configs/tiny.toml")
    parser.add_argument("--profile", action="store_true", help="write a torch.profiler trace for a few steps")
    parser.add_argument("--init-from", metavar="RUN", help="same as --model.init_from=RUN")
    args, overrides = parser.parse_known_args(argv)
    if args.profile:
        overrides.append("--profile.enabled=true")
    if args.init_from:
        overrides.append(f"--model.init_from={args.init_from}")
    cfg = load_config(args.config, overrides)
    run(cfg)


if __name__ == "__main__":
    sys.exit(main())
