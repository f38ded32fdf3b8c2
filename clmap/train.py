"""Training entry point.

``python -m clmap.torchrun --nproc_per_node=N -m clmap.train --config configs/tiny.toml [--section.key=v]``

Also runs as one process (``python -m clmap.train``). The whole optimizer step is ``train_step``. Bad input
is one line on stderr and exit status 2 (``--debug``: the traceback); see the README for what a resume checks.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from clmap.checkpoint import (
    HF_DIR,
    Checkpointer,
    export_hf,
    hf_problem,
    init_note,
    init_source,
    load_model_weights,
)
from clmap.cli import UserError, add_debug_flag, run_main
from clmap.config import Config, ConfigError, check_batch, config_help, load_config
from clmap.data.examples import IGNORE_INDEX, GroupTable
from clmap.data.pipeline import (
    describe_mixture,
    dev_rows,
    init_vocabulary,
    make_stream,
    mixture_keys,
    train_data,
)
from clmap.data.prefetch import Prefetcher
from clmap.data.stream import Row, TrainingStream, collate, to_device
from clmap.kernels.mapping_loss_chunks import kept_tokens
from clmap.memory import check_memory
from clmap.metrics import (
    MetricLogger,
    attention_flops_per_pair,
    causal_pairs,
    flops_per_token,
    gpu_busy_share,
    mfu,
    peak_flops,
    peak_memory_gib,
)
from clmap.model import build_model, check_model, count_parameters, parameter_count
from clmap.objectives import (
    MappingObjective,
    ObjectiveOutput,
    loss_coefficients,
    step_mapping_plan,
    summarize_totals,
)
from clmap.parallel import (
    DistInfo,
    all_reduce_sum,
    cleanup,
    init_distributed,
    precision_note,
    resolve_mixed_precision,
    shard_model,
    use_compile,
)
from clmap.run_folder import (
    check_resume_config,
    check_tokenizer,
    describe_changes,
    lock_run_folder,
    record_start,
    repair_logs,
    stop_with_launcher,
    tokenizer_record,
)


# -- optimisation -------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, cfg: Config):
    """AdamW (no decay on norms and biases) with linear warm-up then cosine decay to min_lr_ratio.

    Fused (one kernel per parameter group, on CUDA and CPU): besides being the fastest, it is the
    implementation that takes a device-side ``found_inf`` flag, which is how ``train_step`` skips a
    non-finite step without asking the host.
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=True,
    )

    def schedule(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.train.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def set_hyperparameters(optimizer, scheduler, cfg: Config) -> None:
    """After a resume: the configured lr, betas, eps and weight decay, and the lr of the current step.

    Loading a checkpoint restores the saved hyperparameters; a change the resume accepted (see
    clmap/run_folder.py) must replace them, else it would be silently ignored. Unchanged values give
    back exactly the restored ones.
    """
    o = cfg.optim
    for i, group in enumerate(optimizer.param_groups):
        group.update(betas=(o.beta1, o.beta2), eps=o.eps, initial_lr=o.lr)
        group["weight_decay"] = o.weight_decay if i == 0 else 0.0
        scheduler.base_lrs[i] = o.lr
        group["lr"] = o.lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def step_counts(rows: list[Row], num_groups: int) -> tuple[torch.Tensor, float]:
    """Target tokens per group and pairs in the whole step (every rank sees every row's metadata)."""
    targets = np.asarray([row.targets for row in rows])
    groups = np.asarray([row.groups for row in rows])
    counts = np.bincount(groups[targets != IGNORE_INDEX], minlength=num_groups)
    return torch.from_numpy(counts.astype(np.float64)), float(sum(len(row.pairs) for row in rows))


@dataclass
class StepBatch:
    """One optimizer step's input, prepared off the training thread (``prepare_step``)."""

    rows: list[Row]  # the global batch, all ranks' rows
    micro: list[dict[str, torch.Tensor]]  # this rank's micro-batches, collated on the host (pinned on CUDA)
    coef: torch.Tensor  # [G] loss weight of each group for this step (loss_coefficients)
    counts: torch.Tensor  # [G] target tokens of each group in the global batch (the realised mixture)
    map_coef: float  # weight of the summed mapping term
    tokens: int  # real (non-padding) tokens of the global batch (tokens/s, MFU)
    rank_pairs: list[int]  # pairs in each rank's share (a step form of the mapping term gathers them)
    pairs: int  # (query, key) pairs of document-causal attention over the global batch (mfu_doc)


def prepare_step(rows: list[Row], cfg: Config, table: GroupTable, dist_info: DistInfo) -> StepBatch:
    """Everything about a step that needs only the host: loss weights from the whole step's counts, this
    rank's share of the rows in micro-batches with the tokens each keeps for the loss (``kept``), and the
    token count."""
    counts, num_pairs = step_counts(rows, len(table))
    coef, map_coef = loss_coefficients(table, counts, num_pairs, cfg.objective)
    pin = dist_info.device.type == "cuda"
    per_rank = len(rows) // dist_info.world_size
    mine = rows[dist_info.rank * per_rank : (dist_info.rank + 1) * per_rank]
    mb = cfg.train.micro_batch
    micro = [collate(mine[i : i + mb], pin_memory=pin) for i in range(0, len(mine), mb)]
    # the loss's chunk plan found here, on the prefetch thread: no device syncs in the step
    for batch in micro:
        batch["kept"] = kept_tokens(batch["targets"], batch["groups"], len(table), IGNORE_INDEX, pin)
    tokens = sum(row.num_tokens for row in rows)  # from the row layout: a pad id can equal a real token's
    rank_pairs = [
        sum(len(row.pairs) for row in rows[r * per_rank : (r + 1) * per_rank])
        for r in range(dist_info.world_size)
    ]
    pairs = causal_pairs(n for row in rows for n in row.seq_lens)
    return StepBatch(
        rows, micro, coef.pin_memory() if pin else coef, counts, map_coef, tokens, rank_pairs, pairs
    )


def train_step(objective, optimizer, batch: StepBatch, cfg: Config, dist_info: DistInfo):
    """One optimizer step over a prepared global batch: this rank's share, in micro-batches.

    Loss weights come from the whole step's counts, and the loss is scaled by the world size because
    FSDP averages gradients over ranks: the gradient is then exactly that of the global-batch mean. A step
    form of the mapping term first pools the whole step's pairs (``step_mapping_plan``, one more forward).
    Nothing here waits for the device: it returns device tensors (the reduced sums, the gradient norm,
    whether the update was applied), read every ``metrics.log_every`` steps. A non-finite step is
    skipped on the device: fused AdamW leaves parameters and state untouched when ``found_inf`` is 1.
    """
    device = dist_info.device
    coef = batch.coef.to(device, non_blocking=True)
    sums = ObjectiveOutput.zero_totals(len(batch.coef), device)
    micro_batches = [to_device(micro, device) for micro in batch.micro]
    plans = step_mapping_plan(objective, micro_batches, batch.rank_pairs, cfg.objective)
    for i, micro in enumerate(micro_batches):
        objective.set_requires_gradient_sync(i == len(micro_batches) - 1)
        out = objective(**micro, group_weights=coef, map_plan=plans[i] if plans else None)
        loss = out.weighted_loss + batch.map_coef * out.map_sum
        (loss * dist_info.world_size).backward()
        sums += out.totals()
    all_reduce_sum(sums)
    grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), cfg.optim.grad_clip or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    finite = torch.isfinite(sums).all() & torch.isfinite(grad_norm)
    optimizer.found_inf = (~finite).float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, grad_norm, finite


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
    """SIGTERM or a first Ctrl-C (SIGINT) sets a flag; the loop saves a checkpoint after the current step
    and exits cleanly. A second Ctrl-C aborts at once (KeyboardInterrupt: exit status 130, no save)."""

    def __init__(self, main: bool):
        self.requested: str | None = None  # the first signal's name
        self.main = main
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            raise KeyboardInterrupt
        if self.requested is None and signum == signal.SIGINT and self.main:
            print(
                "\nSIGINT: saving a checkpoint after this step, then exiting (Ctrl-C again aborts at once)",
                file=sys.stderr,
                flush=True,
            )
        self.requested = self.requested or signal.Signals(signum).name

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank got SIGTERM or SIGINT (a collective: the trainer asks at log steps only)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return bool(self.requested)
        flag = torch.tensor([float(bool(self.requested))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class NonFiniteLoss(UserError):
    """Too many non-finite steps in a row: the run stops (not the user's input, so not exit status 2)."""

    exit_code = 1


def resume(checkpointer: Checkpointer, cfg: Config, objective, optimizer, scheduler, main: bool):
    """Load the newest usable checkpoint if resuming (clmap/checkpoint.py verifies and falls back):
    (step, rows consumed, non-finite steps so far, the checkpoint's folder or None, the data cursor)."""
    if not cfg.checkpoint.resume:
        checkpointer.set_aside()
        return 0, 0, 0, None, None
    restored = checkpointer.restore(objective, optimizer, scheduler)
    if restored is None:
        return 0, 0, 0, None, None
    path, state = restored
    set_hyperparameters(optimizer, scheduler, cfg)
    if main:
        print(f"resumed from {path} (step {state['step']})", flush=True)
    return state["step"], state["rows"], state.get("nonfinite_total", 0), path, state.get("data_cursor")


def data_cursor(stream: TrainingStream, cursor: dict | None, main: bool) -> dict | None:
    """The checkpoint's data cursor if it is this stream's; a stream changed by an allowed config change
    (``resume.allow_changes``) is re-planned from its first row instead, said once."""
    if cursor is not None and cursor["signature"] != stream.signature():
        if main:
            print(
                "data: the stream differs from the checkpoint's; counting its rows from the start", flush=True
            )
        return None
    return cursor


class StepMetrics:
    """The metrics of the steps since the last log line: losses per task and group (token means over
    those steps), lr, the last step's gradient norm, skipped steps, tokens/s, MFU, peak memory and the
    share of the time spent waiting for data. Device values add up without a sync; ``read`` syncs once.

    MFU both ways: ``mfu`` by torchtitan's formula (attention over whole rows) and ``mfu_doc`` with the
    attention FLOPs document-causal packing actually needs (``clmap.metrics.causal_pairs``)."""

    def __init__(
        self,
        cfg: Config,
        table: GroupTable,
        flops_per_token: float,
        dist_info: DistInfo,
        flops_per_pair: float = 0.0,
    ):
        self.cfg, self.table, self.dist_info = cfg, table, dist_info
        self.peak = peak_flops(dist_info.device)
        self.flops_per_token, self.flops_per_pair = flops_per_token, flops_per_pair
        self.mix_keys = mixture_keys(table, cfg.data.pairs)  # group → its source's language or pair
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        device = self.dist_info.device
        self.sums = ObjectiveOutput.zero_totals(len(self.table), device)
        self.skipped = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm = torch.zeros((), dtype=torch.float64, device=device)
        self.steps, self.tokens, self.pairs, self.data_time, self.start = 0, 0, 0, 0.0, now
        self.counts = torch.zeros(len(self.table), dtype=torch.float64)

    def add(
        self, sums, grad_norm, finite, tokens: int, data_time: float, counts=None, pairs: int = 0
    ) -> None:
        """One step's device outputs (``train_step``), its token and attention-pair counts, its wait for
        data and its target tokens per group (host)."""
        if counts is not None:
            self.counts += counts
        self.sums += sums
        self.skipped += (~finite).double()
        self.grad_norm = grad_norm
        self.steps += 1
        self.tokens += tokens
        self.pairs += pairs
        self.data_time += data_time

    def read(self, scheduler, nonfinite_total: int) -> dict:
        """The window's metrics (waits for the device once), then start a new window."""
        totals = self.sums.cpu()
        skipped, grad_norm = torch.stack([self.skipped, self.grad_norm.double()]).tolist()
        now = time.perf_counter()
        elapsed = now - self.start
        metrics = summarize_totals(self.table, totals, self.cfg.objective)
        metrics.update(
            {
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens_per_s": self.tokens / elapsed,
                "step_time_s": elapsed / self.steps,
                "log_steps": self.steps,
                "data_time_share": self.data_time / elapsed,
                "peak_memory_gib": peak_memory_gib(self.dist_info.device),
                "nonfinite_total": nonfinite_total,
                "skipped": skipped,
            }
        )
        total = float(self.counts.sum())
        if total > 0:  # realised mixture: share of target tokens per language / pair in the window
            for key, groups in self.mix_keys.items():
                metrics[f"mix/{key}"] = float(self.counts[groups].sum()) / total
        if self.peak:
            metrics["mfu"], metrics["mfu_doc"] = mfu(
                self.tokens,
                self.pairs,
                elapsed,
                self.flops_per_token,
                self.flops_per_pair,
                self.cfg.data.seq_len,
                self.peak * self.dist_info.world_size,
            )
        self._reset(now)
        return metrics


class NonfiniteGuard:
    """Counts skipped (non-finite) steps on the device. ``check`` reads the counts (one sync; the trainer
    calls it at log and checkpoint steps) and stops the run if more than ``limit`` steps in a row were
    non-finite anywhere since the previous check: the abort comes at the next log or checkpoint step."""

    def __init__(self, limit: int, total: int, device: torch.device):
        self.limit, self.total = limit, total
        self.pending = torch.zeros((), dtype=torch.long, device=device)  # skipped since the last check
        self.in_a_row = torch.zeros((), dtype=torch.long, device=device)
        self.worst = torch.zeros((), dtype=torch.long, device=device)  # longest run since the last check

    def add(self, finite: torch.Tensor) -> None:
        bad = (~finite).long()
        self.pending += bad
        self.in_a_row.add_(1).mul_(bad)
        torch.maximum(self.worst, self.in_a_row, out=self.worst)

    def check(self, last_saved: Path | None) -> tuple[int, int]:
        """(non-finite steps so far, the current run of them); raises NonFiniteLoss past the limit in a row.

        No checkpoint is written during a run of non-finite steps, so ``last_saved`` precedes it."""
        pending, worst, streak = torch.stack([self.pending, self.worst, self.in_a_row]).tolist()
        self.total += pending
        self.pending.zero_()
        self.worst.copy_(self.in_a_row)
        if worst > self.limit:
            raise NonFiniteLoss(
                f"{worst} non-finite losses in a row (limit train.max_nonfinite_in_a_row={self.limit}); "
                f"last checkpoint saved before them: {last_saved or 'none'}"
            )
        return self.total, streak


def run(cfg: Config) -> Path:
    """Train ``cfg`` in its run folder, holding the folder's lock (clmap/run_folder.py) all along."""
    import datasets

    datasets.disable_progress_bars()  # the trainer's own bar is the one that matters
    dist_info = init_distributed(cfg.train.device, cfg.train.backend)
    check_batch(cfg.train, dist_info.world_size)
    stop_with_launcher()
    run_dir = Path(cfg.run_dir)
    if cfg.model.init_from and not (cfg.checkpoint.resume and Checkpointer(run_dir, None).has_checkpoints()):
        init_source(cfg.model.init_from)  # nothing to start from: one line, before the run folder is made
    created = not run_dir.exists()
    lock = lock_run_folder(run_dir, dist_info.rank, dist_info.world_size)
    try:
        return train(cfg, dist_info)
    finally:
        if lock is not None:
            lock.release()
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # a start that failed before writing anything leaves no empty folder


def train(cfg: Config, dist_info: DistInfo) -> Path:
    torch.manual_seed(cfg.train.seed)
    run_dir = Path(cfg.run_dir)
    main = dist_info.is_main
    check_model(cfg.model)  # an unsupported model.path fails here, before data and weights are loaded
    checkpointer = Checkpointer(run_dir, dist_info, keep=cfg.checkpoint.keep)
    # contract: a resume refuses config changes that alter what is trained (before any data is read)
    resuming = cfg.checkpoint.resume and checkpointer.has_checkpoints()
    if cfg.model.init_from:  # that run's tokenizer replaces the configured vocabulary size: say so, record it
        vocab = init_vocabulary(cfg, run_dir)
        if vocab != cfg.tokenizer.vocab_size and main:
            print(
                f"model.init_from: the tokenizer of {cfg.model.init_from} has {vocab} tokens, not "
                f"tokenizer.vocab_size={cfg.tokenizer.vocab_size}; training with it (recorded in "
                "config.json)",
                flush=True,
            )
        cfg.tokenizer.vocab_size = vocab
    changes = check_resume_config(run_dir, cfg) if resuming else []

    tok, mono, parallel = train_data(cfg, run_dir, dist_info, resuming)
    if resuming:  # a tokenizer replaced under the same config is named as such (not as a model change)
        where = cfg.tokenizer.path or cfg.model.path or str(run_dir / "tokenizer")
        check_tokenizer(checkpointer.latest(), tok, where)
    fingerprint = tokenizer_record(tok)
    # before anything is sized by the configuration: rows, dev rows, the model (clmap/memory.py)
    planned_params = parameter_count(cfg.model, tok)
    check_memory(cfg, planned_params, dist_info.world_size, dist_info.device)
    precision = resolve_mixed_precision(cfg.train.mixed_precision, dist_info.device, planned_params)
    if cfg.objective.loss_accum_dtype == "bf16" and precision == "fp32":
        raise ConfigError(
            "objective.loss_accum_dtype=bf16 needs bf16 compute; train.mixed_precision=auto means fp32 on "
            "this device for this model (set train.mixed_precision=bf16)"
        )
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    # indexes derived from stores: built once by rank 0 beside the run, memory-mapped by every rank
    stream = make_stream(cfg, tok, table, mono, parallel, cfg.train.seed, cache_dir=run_dir / "data_index")
    if main:
        print(describe_mixture(stream), flush=True)
    dev = dev_rows(cfg, tok, table, dist_info.world_size)

    lm = build_model(cfg.model, tok, dist_info.device)
    if cfg.model.init_from and not resuming:
        loaded = load_model_weights(lm, cfg.model.init_from)  # weights only: a new optimizer and schedule
        note = init_note(cfg.model.init_from) if loaded.name != HF_DIR else None
        if main:
            print(f"{note + ': ' if note else ''}initialised from {loaded}", flush=True)
    num_params, flops = count_parameters(lm), flops_per_token(lm, cfg.data.seq_len)
    objective = MappingObjective(lm, table, cfg.objective).to(dist_info.device)
    objective = shard_model(
        objective,
        precision,
        cfg.train.activation_checkpointing,
        wrap=cfg.model.fsdp_wrap,
        compile=use_compile(cfg.train.compile, dist_info.device),
        reshard_after_forward=cfg.train.reshard_after_forward,
        prefetch=cfg.train.fsdp_prefetch,
    )
    optimizer, scheduler = build_optimizer(objective, cfg)
    start_step, rows_done, nonfinite_total, last_saved, cursor = resume(
        checkpointer, cfg, objective, optimizer, scheduler, main
    )
    if last_saved is not None and start_step >= cfg.train.steps:
        return _nothing_to_train(cfg, run_dir, start_step, objective, tok, dist_info)
    if main:  # started: only now does config.json take this run's values
        for message in repair_logs(run_dir, start_step):  # logs cut back to the resumed step
            print(message, flush=True)
        if changes:
            print(f"config changes applied from step {start_step}: {describe_changes(changes)}", flush=True)
        record_start(run_dir, cfg, start_step, changes, last_saved)

    logger = MetricLogger(run_dir, enabled=main, tensorboard=cfg.metrics.tensorboard, start_step=start_step)
    preemption = _Preemption(main)
    step_metrics = StepMetrics(cfg, table, flops, dist_info, attention_flops_per_pair(lm))
    nonfinite = NonfiniteGuard(cfg.train.max_nonfinite_in_a_row, nonfinite_total, dist_info.device)
    if main:
        print(
            f"model: {num_params / 1e6:.2f}M parameters, {len(table)} loss groups, world size "
            f"{dist_info.world_size}, device {dist_info.device}, run folder {run_dir}",
            flush=True,
        )
        if note := precision_note(cfg.train.mixed_precision, dist_info.device, planned_params):
            print(note, flush=True)

    profiler = _profiler(cfg, run_dir) if cfg.profile.enabled else nullcontext()
    # data: each step's global batch is drawn and collated ahead on a thread; every rank draws the same
    # rows and keeps its share. rows_done counts rows trained on, not rows prepared (exact resume).
    # A rank reads the tokens of its own rows only; the others' layout comes from the index (loss counts).
    per_rank = cfg.train.global_batch // dist_info.world_size
    lo, hi = dist_info.rank * per_rank, (dist_info.rank + 1) * per_rank
    cursor = data_cursor(stream, cursor, main)  # where rows_done lies: no re-planning of the rows before it
    rows_iter = stream.rows(rows_done, keep=lambda p: lo <= p % cfg.train.global_batch < hi, cursor=cursor)
    batches = Prefetcher(
        lambda: prepare_step([next(rows_iter) for _ in range(cfg.train.global_batch)], cfg, table, dist_info),
        depth=cfg.train.prefetch_steps,
    )
    bar = tqdm(
        total=cfg.train.steps,
        initial=start_step,
        disable=not (main and cfg.metrics.progress),
        desc="train",
        dynamic_ncols=True,
    )
    step = start_step
    step_metrics.start = time.perf_counter()
    with profiler as prof, batches:
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            batch = next(batches)
            data_time = time.perf_counter() - t0
            # step: forward/backward over micro-batches, clip, update (skipped on the device if non-finite)
            sums, grad_norm, finite = train_step(objective, optimizer, batch, cfg, dist_info)
            scheduler.step()
            step += 1
            rows_done += len(batch.rows)
            step_metrics.add(sums, grad_norm, finite, batch.tokens, data_time, batch.counts, batch.pairs)
            nonfinite.add(finite)
            if prof is not None:
                prof.step()
            bar.update(1)
            # Only log, checkpoint and preemption steps wait for the device; the others run ahead of it.
            log = step % cfg.metrics.log_every == 0 or step == cfg.train.steps
            stop = preemption.agreed(dist_info.device) if log else False
            at_end = step == cfg.train.steps and cfg.checkpoint.at_end
            due = step % cfg.checkpoint.every == 0 or at_end or stop
            if log or due:
                nonfinite_total, streak = nonfinite.check(last_saved)  # waits for the device
                paused = time.perf_counter()
            # log: losses and throughput of the steps since the last log line
            if log:
                metrics = step_metrics.read(scheduler, nonfinite_total)
                # eval: dev loss per task and LAC every eval_every steps, logged with the step's metrics
                if cfg.metrics.eval_every and dev and step % cfg.metrics.eval_every == 0:
                    metrics.update(dev_metrics(objective, dev, cfg, table, dist_info))
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss/total']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            # checkpoint: every checkpoint.every steps, at the end, and when any rank got SIGTERM; never
            # while steps are being skipped as non-finite (resuming there would only fail again)
            if due and streak == 0:
                extra = {"rows": rows_done, "nonfinite_total": nonfinite_total, "tokenizer": fingerprint}
                extra["data_cursor"] = stream.cursor(batch.rows[-1], rows_done - 1)
                last_saved = checkpointer.save(step, objective, optimizer, scheduler, extra)
            if log or due:  # dev evaluation and checkpoints are no step's time
                step_metrics.start += time.perf_counter() - paused
            # preemption: after that checkpoint, leave cleanly
            if stop:
                if main:
                    saved = "checkpoint saved" if streak == 0 else "non-finite streak, no checkpoint"
                    print(
                        f"\n{preemption.requested or 'SIGTERM'}: {saved} at step {step}; last checkpoint "
                        f"{last_saved}; exiting",
                        flush=True,
                    )
                break
    bar.close()
    logger.close()
    if step >= cfg.train.steps and cfg.checkpoint.export_hf:
        export_hf(objective, tok, run_dir / HF_DIR, dist_info)
        if main:
            print(f"exported Hugging Face model to {run_dir / HF_DIR}", flush=True)
    cleanup()
    return run_dir


def _nothing_to_train(cfg: Config, run_dir: Path, step: int, objective, tok, dist_info: DistInfo) -> Path:
    """A resume at or past ``train.steps``: say so, and leave config.json (which keeps the reached run's
    values) and a complete hf/ alone; only a missing or incomplete export at the last step is redone."""
    hf = run_dir / HF_DIR
    problem = hf_problem(hf) if cfg.checkpoint.export_hf and step == cfg.train.steps else None
    if dist_info.is_main:
        print(
            f"nothing to train: {run_dir} is at step {step} and train.steps={cfg.train.steps}; "
            + (f"exporting again ({problem})" if problem else "config.json and hf/ left as they are"),
            flush=True,
        )
    if problem:
        export_hf(objective, tok, hf, dist_info)
        if dist_info.is_main:
            print(f"exported Hugging Face model to {hf}", flush=True)
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
        busy = gpu_busy_share(prof)
        head = f"GPU busy share over the {cfg.profile.active} profiled steps: {busy:.3f}\n" if busy else ""
        (out / "summary.txt").write_text(head + prof.key_averages().table(sort_by=sort, row_limit=25))
        (out / "gpu_busy.json").write_text(json.dumps({"gpu_busy_share": busy, "steps": cfg.profile.active}))

    p = cfg.profile
    return profile(
        activities=activities,
        schedule=schedule(wait=p.wait, warmup=p.warmup, active=p.active, repeat=1),
        on_trace_ready=on_ready,
        record_shapes=True,
        profile_memory=True,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Config fields (defaults before --config), each overridable as --section.key=value:\n"
        + config_help(),
    )
    parser.add_argument("--config", default=None, help="TOML preset, e.g. configs/tiny.toml")
    parser.add_argument("--profile", action="store_true", help="write a torch.profiler trace for a few steps")
    parser.add_argument("--init-from", metavar="RUN", help="same as --model.init_from=RUN")
    add_debug_flag(parser)
    return parser


def config_from_args(argv: list[str] | None) -> Config:
    """The run's config from the trainer's command line, checked (types, ranges, cross-field rules); the
    launchers (``clmap.demo``) call it before they start processes, so a bad override is one line at once."""
    args, overrides = build_parser().parse_known_args(argv)
    if args.profile:
        overrides.append("--profile.enabled=true")
    if args.init_from:
        overrides.append(f"--model.init_from={args.init_from}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> None:
    run(config_from_args(argv))


if __name__ == "__main__":
    sys.exit(run_main(main, None, "clmap.train"))
