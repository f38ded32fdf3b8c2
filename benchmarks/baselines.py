"""The two loops clmap's trainer is measured against, each run in its own process by train_throughput.

``plain``: a plain Hugging Face loop. ``LlamaForCausalLM`` built from the same model config, clmap's
optimizer, the same rows of the same stream but unpacked (one sequence per row, right-padded to the
longest of its micro-batch, with an attention mask) and ``F.cross_entropy`` on the full logits
(autocast bf16 on GPU). Both see exactly the same non-pad tokens per optimizer step.

``titan``: a torchtitan-style loop on the same model: FSDP2 (bf16 parameters, fp32 reduction), each
decoder block's forward ``torch.compile``d, SDPA attention, fused AdamW, a chunked fused linear +
cross-entropy (``F.linear_cross_entropy`` where this torch has it, else Liger-Kernel's, else a chunked
loss that recomputes its logits in backward), packed rows with restarting positions (the same
per-document attention as clmap's trainer), next-token loss only, no host sync between log points.

``python -m benchmarks.baselines --case '<json>'`` prints the measured summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError


def unpack_row(row) -> list[tuple[list[int], list[int]]]:
    """Split a packed row back into its sequences (``Row.seq_lens``); the padding tail is dropped."""
    out, start = [], 0
    for n in row.seq_lens:
        out.append((row.input_ids[start : start + n], row.targets[start : start + n]))
        start += n
    return out


def pad_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device):
    """Right-pad to the longest sequence of the micro-batch, as a plain HF collator does."""
    from clmap.data.examples import IGNORE_INDEX

    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s_ids, s_tgt) in enumerate(seqs):
        ids[i, : len(s_ids)] = torch.tensor(s_ids)
        tgt[i, : len(s_tgt)] = torch.tensor(s_tgt)
        mask[i, : len(s_ids)] = 1
    return ids.to(device), tgt.to(device), mask.to(device)


def _setup(case: dict):
    """Config, device, tokenizer, row iterator, model and the FLOPs per token, as the trainer has them."""
    from clmap.config import load_config
    from clmap.data.examples import GroupTable
    from clmap.data.pipeline import load_texts, make_stream, open_stores
    from clmap.data.tokenizer import load_tokenizer
    from clmap.metrics import attention_flops_per_pair, flops_per_token
    from clmap.model import build_model

    cfg = load_config(case["config"], case["overrides"])
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    torch.manual_seed(cfg.train.seed)
    tok = load_tokenizer(cfg.tokenizer.path)
    # the trainer's two sources: token stores (data.store) or the corpus texts
    mono, parallel = open_stores(cfg, tok) if cfg.data.store else load_texts(cfg, "train")
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    rows = make_stream(cfg, tok, table, mono, parallel, cfg.train.seed).rows(0)
    model = build_model(cfg.model, tok, device)
    flops = (flops_per_token(model, cfg.data.seq_len), attention_flops_per_pair(model), cfg.data.seq_len)
    return cfg, device, tok, rows, model, flops


def _record(
    tokens: int, steps: int, elapsed: float, data_time: float, device, peak, flops, pairs: int | None = None
) -> dict:
    """One log window; ``flops`` is (per token, per attention pair, row length) as ``clmap.metrics.mfu``
    takes them, ``pairs`` the window's document-causal attention pairs (None: no ``mfu_doc``)."""
    from clmap.metrics import mfu, peak_memory_gib

    record = {
        "tokens_per_s": tokens / elapsed,
        "step_time_s": elapsed / steps,
        "log_steps": steps,
        "data_time_share": data_time / elapsed,
        "peak_memory_gib": peak_memory_gib(device),
    }
    if peak:
        record["mfu"], doc = mfu(tokens, pairs, elapsed, flops[0], flops[1], flops[2], peak)
        if doc is not None:
            record["mfu_doc"] = doc
    return record


# -- plain ----------------------------------------------------------------------------------------
def plain_loop(case: dict) -> dict:
    """Train the plain baseline and return the summary of the measured steps (synced every step)."""
    from benchmarks.train_throughput import summarize
    from clmap.data.examples import IGNORE_INDEX
    from clmap.metrics import peak_flops
    from clmap.train import build_optimizer

    cfg, device, tok, rows_iter, model, flops = _setup(case)
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg)
    peak = peak_flops(device)
    use_cuda = device.type == "cuda"
    bf16 = cfg.train.mixed_precision == "bf16" or (cfg.train.mixed_precision == "auto" and use_cuda)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    n_micro = cfg.train.global_batch // cfg.train.micro_batch
    records, padded, real = [], 0, 0
    if use_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(case["steps"]):
        t0 = time.perf_counter()
        rows = [next(rows_iter) for _ in range(cfg.train.global_batch)]
        seqs = [s for r in rows for s in unpack_row(r)]
        t_data = time.perf_counter() - t0
        num_targets = sum(sum(t != IGNORE_INDEX for t in tgt) for _, tgt in seqs)
        for chunk in np.array_split(np.arange(len(seqs)), n_micro):
            if len(chunk) == 0:
                continue
            ids, tgt, mask = pad_batch([seqs[i] for i in chunk], tok.pad_id, device)
            padded, real = padded + ids.numel(), real + int(mask.sum())
            with autocast:
                logits = model(input_ids=ids, attention_mask=mask).logits
                loss = F.cross_entropy(
                    logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            (loss / max(1, num_targets)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if use_cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(ids) for ids, _ in seqs)
        records.append({"step": len(records) + 1, **_record(tokens, 1, elapsed, t_data, device, peak, flops)})
    summary = summarize(records, case["warmup"], case["steps"])
    summary["pad_share"] = 1 - real / max(1, padded)
    return summary


# -- torchtitan-style ----------------------------------------------------------------------------
def chunked_lm_loss():
    """(name, fn(hidden, weight, targets) -> summed loss): the best fused linear + cross-entropy here."""
    from clmap.data.examples import IGNORE_INDEX

    if hasattr(F, "linear_cross_entropy"):
        return "torch_lce", lambda h, w, t: F.linear_cross_entropy(
            h, w, t, reduction="sum", ignore_index=IGNORE_INDEX
        )
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return "liger", lambda h, w, t: liger_fused_linear_cross_entropy(
            h, w, t, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    except ImportError:
        pass
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(h, w, t):
        return F.cross_entropy(F.linear(h, w).float(), t, ignore_index=IGNORE_INDEX, reduction="sum")

    def chunked(h, w, t, rows: int = 4096):
        return sum(
            checkpoint(chunk_loss, h[i : i + rows], w, t[i : i + rows], use_reentrant=False)
            for i in range(0, h.shape[0], rows)
        )

    return "chunked_ce", chunked


class CausalLMLoss(nn.Module):
    """The LM and its loss in one forward: as the FSDP root it has the lm_head gathered there. Packed
    documents attend only to themselves, told to attention as the trainer tells it
    (``clmap.model.packed_attention_inputs``), so both loops do the same attention work."""

    INPUTS = ("input_ids", "position_ids", "cu_seq_lens", "max_seq_len", "targets")

    def __init__(self, lm, loss_fn):
        from clmap.model import check_packed_attention

        super().__init__()
        self.lm, self.loss_fn = lm, loss_fn
        self.attn_implementation = check_packed_attention(lm)

    def forward(self, input_ids, position_ids, cu_seq_lens, max_seq_len, targets):
        from clmap.model import packed_attention_inputs

        embeds = self.lm.get_input_embeddings()(input_ids)
        inputs = packed_attention_inputs(
            self.attn_implementation, embeds, position_ids, cu_seq_lens, max_seq_len, self.lm.config
        )
        out = self.lm.get_decoder()(**inputs, use_cache=False)
        hidden = out.last_hidden_state.flatten(0, 1)
        return self.loss_fn(hidden, self.lm.get_output_embeddings().weight, targets.flatten())


def titan_loop(case: dict) -> dict:
    """Train the torchtitan-style baseline; measured windows are synced at their ends only."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from benchmarks.train_throughput import summarize
    from clmap.data.stream import collate
    from clmap.metrics import causal_pairs, gpu_busy_share, peak_flops
    from clmap.model import decoder_layers
    from clmap.parallel import cleanup, init_distributed
    from clmap.train import build_optimizer

    cfg, device, tok, rows_iter, lm, flops = _setup(case)
    init_distributed(device.type, "auto")
    loss_name, loss_fn = chunked_lm_loss()
    model = CausalLMLoss(lm, loss_fn)
    use_cuda = device.type == "cuda"
    bf16 = cfg.train.mixed_precision == "bf16" or (cfg.train.mixed_precision == "auto" and use_cuda)
    mp = (
        {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}
        if bf16
        else {}
    )
    for block in decoder_layers(lm):
        if use_cuda:
            block.forward = torch.compile(block.forward)
        fully_shard(block, reshard_after_forward=False, **mp)
    fully_shard(model, **mp)
    optimizer, scheduler = build_optimizer(model, cfg)
    peak = peak_flops(device)
    gb, mb, warmup, steps = cfg.train.global_batch, cfg.train.micro_batch, case["warmup"], case["steps"]
    log_every, profiled = case["log_every"], case.get("profile_steps", 0)
    records, tokens, pairs, data_time, window_steps = [], 0, 0, 0.0, 0
    if use_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    profiler = nullcontext()
    start = time.perf_counter()
    for step in range(1, steps + profiled + 1):
        if step == steps + 1 and profiled:
            activities = [torch.profiler.ProfilerActivity.CPU]
            activities += [torch.profiler.ProfilerActivity.CUDA] if use_cuda else []
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
        t0 = time.perf_counter()
        rows = [next(rows_iter) for _ in range(gb)]
        micro = [collate(rows[i : i + mb], device) for i in range(0, gb, mb)]
        num_targets = sum(r.num_targets for r in rows)
        tokens += sum(sum(1 for t in r.input_ids if t != tok.pad_id) for r in rows)
        pairs += causal_pairs(n for r in rows for n in r.seq_lens)
        data_time += time.perf_counter() - t0
        for i, batch in enumerate(micro):
            model.set_requires_gradient_sync(i == len(micro) - 1)
            loss = model(**{k: batch[k] for k in CausalLMLoss.INPUTS})
            (loss / max(1, num_targets)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        window_steps += 1
        if step <= steps and (step % log_every == 0 or step == steps):
            if use_cuda:
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            records.append(
                {
                    "step": step,
                    **_record(tokens, window_steps, now - start, data_time, device, peak, flops, pairs),
                }
            )
            tokens, pairs, data_time, window_steps, start = 0, 0, 0.0, 0, now
    summary = summarize(records, warmup, steps)
    summary.update({"gpu_busy_share": "", "loss_impl": loss_name})
    if profiled:
        if use_cuda:
            torch.cuda.synchronize(device)
        profiler.__exit__(None, None, None)
        busy = gpu_busy_share(profiler)
        sort = "cuda_time_total" if use_cuda else "cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=25)
        head = f"GPU busy share over the {profiled} profiled steps: {busy:.3f}\n" if busy else ""
        summary.update({"gpu_busy_share": "" if busy is None else busy, "profile": head + table})
    cleanup()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="JSON: impl, config, overrides, steps, warmup, ...")
    add_debug_flag(parser)
    text = parser.parse_args(argv).case
    loops = {"plain": plain_loop, "titan": titan_loop}
    try:
        case = json.loads(text)
        loop = loops[case["impl"]]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"--case {text!r}: expected a JSON object with impl one of {', '.join(loops)} ({exc!r})"
        ) from None
    print(json.dumps(loop(case)))


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.baselines"))
