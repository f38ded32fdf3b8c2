"""Sharded checkpoints with torch.distributed.checkpoint (DCP) and exact resume; Hugging Face export.

A checkpoint is written to ``step_XXXXXXXX.tmp`` and renamed only once every rank has finished,
then the ``latest`` pointer is replaced atomically; a folder left half-written by a killed run is
never picked up (and is removed by the next save). Resume restores model, optimizer, scheduler,
the data position and every rank's RNG, so the loss curve continues as if never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from clmap.parallel import DistInfo, barrier

COMPLETE_MARKER = "train_state.json"
LATEST = "latest"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, run_dir: str | Path, dist_info: DistInfo, keep: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.dist = dist_info
        self.keep = keep

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (path / COMPLETE_MARKER).is_file() and (path / ".metadata").is_file()

    def complete_checkpoints(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if p.suffix != ".tmp" and self.is_complete(p)]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the ``latest`` pointer if it is valid, else a scan."""
        pointer = self.root / LATEST
        if pointer.is_file():
            target = self.root / pointer.read_text().strip()
            if self.is_complete(target):
                return target
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def save(self, step: int, model, optimizer, scheduler, train_state: dict) -> Path:
        final = self.root / f"step_{step:08d}"
        tmp = final.with_suffix(".tmp")
        if self.dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
        barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        torch.save(rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
        barrier()
        if self.dist.is_main:
            torch.save({"scheduler": scheduler.state_dict()}, tmp / "scheduler.pt")
            state = {**train_state, "step": step, "world_size": self.dist.world_size}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, final)
            pointer_tmp = self.root / f".{LATEST}.tmp"
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.root / LATEST)
            for old in self.complete_checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, path: Path, model, optimizer, scheduler) -> dict:
        """Restore everything saved at ``path``; returns the saved train state (step, rows, ...)."""
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False)["scheduler"])
        train_state = json.loads((path / COMPLETE_MARKER).read_text())
        rng_file = path / f"rng_rank{self.dist.rank}.pt"
        if train_state.get("world_size") == self.dist.world_size and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return train_state


def export_hf(objective, tokenizer, out_dir: str | Path, dist_info: DistInfo) -> Path | None:
    """Gather the full model on rank 0 and write a Hugging Face folder (safetensors + config + tokenizer)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(objective, options=options)
    out_dir = Path(out_dir)
    if dist_info.is_main:
        lm_state = {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}
        out_dir.mkdir(parents=True, exist_ok=True)
        objective.lm.save_pretrained(out_dir, state_dict=lm_state, safe_serialization=True)
        tokenizer.save(out_dir)
    barrier()
    return out_dir if dist_info.is_main else None


# -- starting a run from another run's weights (model.init_from) -------------------------------------
def init_source(path: str | Path) -> tuple[Path, Path]:
    """(weights, tokenizer folder) that ``model.init_from`` names: a run's ``hf/`` export if it has one,
    else its latest complete checkpoint; or one checkpoint folder (``RUN/checkpoints/step_N``). The
    tokenizer is the one that run trained with."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model.init_from: {path} is not a folder")
    if Checkpointer.is_complete(path):
        run, weights = path.parent.parent, path
    elif (path / "hf" / "config.json").is_file():
        return path / "hf", path / "hf"
    else:
        run, weights = path, Checkpointer(path, DistInfo(0, 1, 0, torch.device("cpu"))).latest()
        if weights is None:
            raise FileNotFoundError(
                f"model.init_from: {path} has neither an exported hf/ folder nor a complete checkpoint in "
                f"{path / 'checkpoints'}"
            )
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    named = saved.get("tokenizer", {}).get("path") or saved.get("model", {}).get("path")
    tokenizer = run / "tokenizer" if (run / "tokenizer").is_dir() else Path(named) if named else None
    if tokenizer is None or not tokenizer.exists():
        raise FileNotFoundError(
            f"model.init_from: no tokenizer for {weights} (looked in {run / 'tokenizer'})"
        )
    return weights, tokenizer


def load_model_weights(model: torch.nn.Module, run: str | Path) -> Path:
    """Copy the weights of ``run`` (:func:`init_source`) into the unsharded ``model``; nothing else (no
    optimizer, schedule, data position). Every rank loads the whole model, as ``model.path`` does.
    Returns what was loaded; a model of another shape is an error naming the first differences."""
    source, _ = init_source(run)
    mine = model.state_dict()
    if source.name == "hf":
        from transformers import AutoModelForCausalLM

        theirs = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        weights = theirs.state_dict()
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
    else:  # a DCP checkpoint holds {"model": the objective's state ("lm." + the LM's keys), "optim": ...}
        metadata = dcp.FileSystemReader(str(source)).read_metadata().state_dict_metadata
        prefix = "model.lm."
        shapes = {k.removeprefix(prefix): tuple(m.size) for k, m in metadata.items() if k.startswith(prefix)}
    problems = [f"{k} missing" for k in mine if k not in shapes]
    problems += [
        f"{k} is {list(shapes[k])} there, {list(v.shape)} here"
        for k, v in mine.items()
        if k in shapes and shapes[k] != tuple(v.shape)
    ]
    problems += [f"{k} is not in the configured model" for k in shapes if k not in mine]
    if problems:
        raise ValueError(
            f"model.init_from: {source} does not fit the configured model ({len(problems)} differences: "
            f"{'; '.join(problems[:3])}); configure the same model as {run}/config.json"
        )
    if source.name == "hf":
        model.load_state_dict(weights)
    else:
        dcp.load({"model": {f"lm.{k}": v for k, v in mine.items()}}, checkpoint_id=str(source))
    return source
