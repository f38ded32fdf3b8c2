"""Sharded checkpoints with torch.distributed.checkpoint (DCP), verified resume with fallback; HF export.

``checkpoints/step_XXXXXXXX/`` holds the DCP shards and ``.metadata``, ``rng_rank{r}.pt`` of every rank,
``scheduler.pt``, ``train_state.json`` and, written last, ``manifest.json``: the size and sha256 of every
other file. A save goes to ``step_XXXXXXXX.tmp``, is renamed once every rank has finished and the manifest
is written, then the ``latest`` pointer is replaced; a ``.tmp`` left by a killed run is never picked up
(and is removed by the next save), as is a ``.pruning`` folder left by a killed prune.

Resume restores model, optimizer, scheduler, the data position and every rank's RNG, so the loss curve
continues as if never interrupted. It takes the newest checkpoint by name whose manifest verifies (sizes,
then checksums split over the ranks) and that loads; one that does not is skipped with a message naming
it and why (and renamed ``.damaged`` once an older one has loaded). ``latest`` is only advisory. If
checkpoints existed but none is usable, the run stops with an error naming the folder instead of
silently starting again from step 0.

Before each save the free space is checked against the previous checkpoint's size; a save that fails
(no space left, or any other error) removes its ``.tmp`` folder and stops the run with one line, leaving
the earlier checkpoints intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from clmap.cli import UserError, root_cause
from clmap.parallel import DistInfo, barrier, from_main, gather_objects

MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.json"
COMPLETE_MARKER = MANIFEST  # written last: a folder with it is a finished save
LATEST = "latest"
STEP_DIR = re.compile(r"step_(\d{8})")
DAMAGED = ".damaged"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class ResumeError(UserError):
    """The run folder has checkpoints, but none can be resumed as asked."""


class CheckpointSaveError(UserError):
    """A save failed (disk full, I/O error); its ``.tmp`` is removed, earlier checkpoints are intact."""

    exit_code = 1  # not the user's input: the machine refused


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


# -- small helpers ----------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries), so a power cut cannot leave a manifest without its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def step_of(path: Path) -> int:
    return int(STEP_DIR.fullmatch(path.name).group(1))  # type: ignore[union-attr]


def _exceptions(exc: BaseException):
    """``exc``, its causes, and what DCP collected from the ranks (a CheckpointException wraps them)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        if isinstance(e, CheckpointException):
            todo += [pair[0] if isinstance(pair, tuple) else pair for pair in e.failures.values()]


def describe(exc: BaseException) -> str:
    """One line for an exception: its innermost cause, DCP's per-rank wrapping removed."""
    inner = [e for e in _exceptions(exc) if not isinstance(e, CheckpointException)]
    cause = root_cause(inner[-1]) if inner else exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT/EFBIG anywhere in the chain; torch.save reports a short write as 'unexpected pos'."""
    for e in _exceptions(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(e) or "unexpected pos" in str(e):
            return True
    return False


def _gather(obj, dist_info: DistInfo | None) -> list:
    return gather_objects(obj, dist_info.world_size if dist_info else 1)


def _from_main(obj, dist_info: DistInfo | None):
    return from_main(obj, dist_info.world_size if dist_info else 1)


class Checkpointer:
    def __init__(self, run_dir: str | Path, dist_info: DistInfo | None, keep: int = 2, log=print):
        self.root = Path(run_dir) / "checkpoints"
        self.dist = dist_info
        self.keep = keep
        self.main = dist_info is None or dist_info.is_main
        self.log = log if self.main else (lambda *a, **k: None)

    # -- what is there ------------------------------------------------------------------------------------
    def folders(self) -> list[Path]:
        """Every ``step_XXXXXXXX`` folder (finished or damaged, not ``.tmp``), oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(
            (p for p in self.root.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir()), key=step_of
        )

    @staticmethod
    def is_complete(path: Path) -> bool:
        """A finished save: its manifest, or (written before manifests existed) train state + DCP metadata."""
        legacy = (path / TRAIN_STATE).is_file() and (path / ".metadata").is_file()
        return (path / MANIFEST).is_file() or legacy

    def complete_checkpoints(self) -> list[Path]:
        return [p for p in self.folders() if self.is_complete(p)]

    def latest(self) -> Path | None:
        """The newest finished checkpoint by name (not verified; ``restore`` verifies)."""
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def has_checkpoints(self) -> bool:
        """Did this folder ever hold a finished checkpoint (even one damaged or deleted since)?"""
        if not self.root.is_dir():
            return False
        return (
            bool(self.folders()) or (self.root / LATEST).exists() or any(self.root.glob(f"step_*{DAMAGED}"))
        )

    def _pointer_warning(self) -> str | None:
        """``latest`` is advisory: a garbled or dangling one is ignored with a warning."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        try:
            name = pointer.read_bytes().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return (
                f"{pointer} is unreadable ({describe(exc)}); ignored, the newest checkpoint by name is used"
            )
        if not STEP_DIR.fullmatch(name):
            return (
                f"{pointer} holds {name[:40]!r}, not a checkpoint name; ignored, the newest by name is used"
            )
        if not (self.root / name).is_dir():
            return f"{pointer} names {name}, which does not exist; ignored, the newest by name is used"
        return None

    # -- verification -------------------------------------------------------------------------------------
    def verify(self, path: Path) -> tuple[str | None, bool]:
        """(what is wrong with ``path`` or None, whether it is a legacy checkpoint without a manifest).

        Sizes are checked on every rank, checksums split over the ranks; every rank gets the same answer.
        """
        manifest = path / MANIFEST
        problems: list[str] = []
        legacy = False
        if not manifest.is_file():
            legacy = self.is_complete(path)
            if not legacy:
                problems.append(f"incomplete: no {MANIFEST}")
        else:
            rank, world = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
            try:
                files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
                for i, (name, entry) in enumerate(sorted(files.items())):
                    file = path / name
                    if not file.is_file():
                        problems.append(f"{name} is missing")
                    elif file.stat().st_size != entry["size"]:
                        size = file.stat().st_size
                        problems.append(f"{name} has {size} bytes, the manifest says {entry['size']}")
                    elif i % world == rank and sha256(file) != entry["sha256"]:
                        problems.append(f"{name} does not match its sha256 in the manifest")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{MANIFEST} is unreadable ({describe(exc)})")
        if not problems:
            try:
                state = json.loads((path / TRAIN_STATE).read_text(encoding="utf-8"))
                if state.get("step") != step_of(path):
                    problems.append(f"{TRAIN_STATE} says step {state.get('step')}")
            except (OSError, ValueError) as exc:
                problems.append(f"{TRAIN_STATE} is unreadable ({describe(exc)})")
        merged = sorted({p for rank_problems in _gather(problems, self.dist) for p in rank_problems})
        return ("; ".join(merged) or None), legacy

    # -- resume -------------------------------------------------------------------------------------------
    def load(self, path: Path, model, optimizer, scheduler) -> dict:
        """Restore everything saved at ``path``; returns the saved train state (step, rows, ...)."""
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False)["scheduler"])
        train_state = json.loads((path / TRAIN_STATE).read_text())
        rank, world = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        rng_file = path / f"rng_rank{rank}.pt"
        if train_state.get("world_size") == world and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return train_state

    def restore(self, model, optimizer, scheduler) -> tuple[Path, dict] | None:
        """Load the newest usable checkpoint: (its folder, its train state), or None if there never was one.

        A checkpoint that fails verification is skipped with a message and the previous one is tried. One
        that verifies but does not load was written for another model: that is an error, not damage.
        """
        warning = self._pointer_warning()
        if warning:
            self.log(f"warning: {warning}", flush=True)
        skipped: list[tuple[Path, str]] = []
        for path in reversed(self.folders()):
            problem, legacy = self.verify(path)
            if problem is None:
                if legacy:
                    self.log(
                        f"warning: {path} has no {MANIFEST} (older clmap); loading it unverified", flush=True
                    )
                error = None
                try:
                    state = self.load(path, model, optimizer, scheduler)
                except (Exception, CheckpointException) as exc:
                    error = describe(exc)
                errors = [e for e in _gather(error, self.dist) if e]
                if not errors:
                    self._set_damaged_aside(skipped, path)
                    return path, state
                if not legacy:
                    raise ResumeError(
                        f"{path} passed its checksums but does not load into this model ({errors[0]}); was "
                        "the model changed with resume.allow_changes? Use a new run_dir for another model"
                    )
                problem = f"does not load ({errors[0]})"
            self.log(f"skipping checkpoint {path}: {problem}", flush=True)
            skipped.append((path, problem))
        if skipped or self.has_checkpoints():
            found = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "no step_* folder left"
            raise ResumeError(
                f"no usable checkpoint in {self.root} ({found}); to start from scratch pass "
                "--checkpoint.resume=false (the old checkpoints are moved aside) or use a new run_dir"
            )
        return None

    def _set_damaged_aside(self, skipped: list[tuple[Path, str]], loaded: Path) -> None:
        """Rename checkpoints skipped on the way to ``loaded`` to ``*.damaged`` and point ``latest`` at it."""
        if self.main and skipped:
            for path, _ in skipped:
                aside = path.with_name(path.name + DAMAGED)
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(path, aside)
                self.log(f"renamed the damaged checkpoint to {aside}", flush=True)
            self._point_latest(loaded)
        barrier()

    # What a restart moves aside: everything the earlier run wrote that the new one would overwrite or mix
    # with its own (config_history.jsonl stays: it records every start in this folder, this one too).
    REPLACED = ("checkpoints", "metrics.jsonl", "tensorboard", "hf", "hf.tmp", "profile")

    def set_aside(self) -> Path | None:
        """``checkpoint.resume=false``: move the earlier run's checkpoints, metrics, TensorBoard logs and
        hf/ export to ``replaced-<time>/`` (config.json copied beside them), so nothing of it is mixed
        with or overwritten by the new run."""
        moved = None
        run_dir = self.root.parent
        present = [run_dir / name for name in self.REPLACED if (run_dir / name).exists()]
        if self.main and present:
            moved = run_dir / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            moved.mkdir(parents=True, exist_ok=True)
            for path in present:
                os.replace(path, moved / path.name)
            if (run_dir / "config.json").is_file():
                shutil.copy2(run_dir / "config.json", moved / "config.json")
            self.log(
                f"checkpoint.resume=false: starting from step 0; moved {', '.join(p.name for p in present)} "
                f"to {moved}"
            )
        barrier()
        return moved

    # -- save ---------------------------------------------------------------------------------------------
    def _point_latest(self, final: Path) -> None:
        pointer_tmp = self.root / f".{LATEST}.tmp"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, self.root / LATEST)

    def _remove_leftovers(self) -> None:
        """Folders of killed saves (``.tmp``) and prunes (``.pruning``), and step folders a killed prune of
        an older clmap left without their train state."""
        for p in self.root.iterdir():
            if p.is_dir() and (
                p.suffix in (".tmp", ".pruning") or (STEP_DIR.fullmatch(p.name) and not self.is_complete(p))
            ):
                shutil.rmtree(p, ignore_errors=True)
                if p.suffix != ".tmp":
                    self.log(f"removed the unfinished checkpoint folder {p}", flush=True)

    def _space_problem(self, step: int, final: Path) -> str | None:
        """Free space against the previous checkpoint's size (None when there is enough, or no previous)."""
        previous = next((p for p in reversed(self.complete_checkpoints()) if (p / MANIFEST).is_file()), None)
        if previous is None:
            return None
        try:
            files = json.loads((previous / MANIFEST).read_text())["files"]
            needed = sum(entry["size"] for entry in files.values())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        free = shutil.disk_usage(self.root).free
        if free >= needed:
            return None
        return (
            f"not enough free space to save step {step} to {final}: the previous checkpoint {previous.name} "
            f"takes {human_bytes(needed)}, {human_bytes(free)} is free; free some space and rerun the same "
            f"command to resume from {previous.name}"
        )

    def _write_own_files(self, tmp: Path, model, optimizer) -> dict[str, dict]:
        """This rank's part: DCP shards (collective), its RNG state; sizes and checksums of what it wrote."""
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        rank = self.dist.rank if self.dist else 0
        rng_file = tmp / f"rng_rank{rank}.pt"
        torch.save(rng_state(), rng_file)
        _fsync(rng_file)
        own = [rng_file, *tmp.glob(f"__{rank}_*")]
        return {f.name: {"size": f.stat().st_size, "sha256": sha256(f)} for f in own}

    def _finish(self, tmp: Path, final: Path, step: int, scheduler, train_state: dict, files: dict) -> None:
        """Rank 0: scheduler and train state, the manifest last, then the rename, ``latest`` and pruning."""
        torch.save({"scheduler": scheduler.state_dict()}, tmp / "scheduler.pt")
        state = {**train_state, "step": step, "world_size": self.dist.world_size if self.dist else 1}
        (tmp / TRAIN_STATE).write_text(json.dumps(state, indent=2) + "\n")
        for f in sorted(tmp.iterdir()):
            if f.is_file() and f.name not in files:
                _fsync(f)
                files[f.name] = {"size": f.stat().st_size, "sha256": sha256(f)}
        manifest = {"step": step, "files": dict(sorted(files.items()))}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        os.replace(tmp, final)
        self._point_latest(final)
        _fsync(self.root)
        for old in self.complete_checkpoints()[: -self.keep]:
            doomed = old.with_name(old.name + ".pruning")  # a killed prune leaves it for the next save
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def save(self, step: int, model, optimizer, scheduler, train_state: dict) -> Path:
        final = self.root / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        problem = None
        if self.main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            problem = self._space_problem(step, final)
        problem = _from_main(problem, self.dist)
        if problem:
            raise CheckpointSaveError(problem)
        if self.main:
            shutil.rmtree(final, ignore_errors=True)  # this step's folder from an earlier attempt
        barrier()
        failure: BaseException | None = None
        files: dict[str, dict] = {}
        try:
            files = self._write_own_files(tmp, model, optimizer)
        except (Exception, CheckpointException) as exc:
            failure = exc
        gathered = _gather((files, self._failure(failure)), self.dist)
        reason = next((f for _, f in gathered if f), None)  # the same on every rank
        if reason is None:
            if self.main:
                merged = {name: entry for rank_files, _ in gathered for name, entry in rank_files.items()}
                try:
                    self._finish(tmp, final, step, scheduler, train_state, merged)
                except Exception as exc:
                    failure, reason = exc, self._failure(exc)
            reason = _from_main(reason, self.dist)
        if reason is not None:
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
            barrier()
            disk_full, detail = reason
            previous = self.latest()
            intact = (
                f"the earlier checkpoints are intact (newest: {previous})"
                if previous
                else "no earlier checkpoint"
            )
            what = "no space left on device while saving" if disk_full else "failed to save"
            raise CheckpointSaveError(
                f"{what} step {step} to {final} ({detail}); removed {tmp.name}; {intact}"
            ) from failure
        barrier()
        return final

    def _failure(self, exc: BaseException | None) -> tuple[bool, str] | None:
        if exc is None:
            return None
        disk_full = is_disk_full(exc)
        detail = describe(exc)
        if disk_full:
            detail = f"{detail}; {human_bytes(shutil.disk_usage(self.root).free)} free"
        return disk_full, detail


HF_DIR = "hf"
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class InitFromError(UserError):
    """``model.init_from`` names nothing a run can start from."""


def hf_problem(folder: str | Path) -> str | None:
    """What makes an ``hf/`` export unusable, or None: its config, every weight file (each safetensors
    file as long as its own header says) and a tokenizer. An export killed midway lacks some of them."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json"
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{index} is unreadable ({describe(exc)})"
    for name in files:
        file = folder / name
        if not file.is_file():
            return f"{folder} has no {name} (its weights)"
        try:
            with open(file, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            return f"{file} is not a complete safetensors file ({describe(exc)})"
        if file.stat().st_size != 8 + header_len + end:
            return f"{file} has {file.stat().st_size} bytes, its header says {8 + header_len + end}"
    if not any((folder / name).is_file() for name in _HF_TOKENIZER_FILES):
        return f"{folder} has no tokenizer files"
    return None


def export_hf(objective, tokenizer, out_dir: str | Path, dist_info: DistInfo) -> Path | None:
    """Gather the full model on rank 0 and write a Hugging Face folder (safetensors + config + tokenizer).

    Written into ``out_dir.tmp`` and renamed when complete, so ``out_dir`` is never a partial export (a
    kill midway leaves the ``.tmp``, replaced by the next export); an older export is replaced whole."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(objective, options=options)
    out_dir = Path(out_dir)
    if dist_info.is_main:
        lm_state = {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}
        tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        objective.lm.save_pretrained(tmp, state_dict=lm_state, safe_serialization=True)
        tokenizer.save(tmp)
        for f in tmp.iterdir():
            _fsync(f)
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        _fsync(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return out_dir if dist_info.is_main else None


# -- starting a run from another run's weights (model.init_from) -------------------------------------
def init_source(path: str | Path) -> tuple[Path, Path]:
    """(weights, tokenizer folder) that ``model.init_from`` names: a run's ``hf/`` export if it is
    complete (:func:`hf_problem`), else its latest complete checkpoint; or one checkpoint folder
    (``RUN/checkpoints/step_N``). The tokenizer is the one that run trained with. ``InitFromError``
    (one line) when there is nothing to start from."""
    path = Path(path)
    if not path.is_dir():
        raise InitFromError(f"model.init_from: {path} is not a folder")
    if Checkpointer.is_complete(path):
        run, weights = path.parent.parent, path
    elif (path / HF_DIR).exists() and hf_problem(path / HF_DIR) is None:
        return path / HF_DIR, path / HF_DIR
    else:
        run, weights = path, Checkpointer(path, DistInfo(0, 1, 0, torch.device("cpu"))).latest()
        if weights is None:
            export = hf_problem(path / HF_DIR) if (path / HF_DIR).exists() else "no exported hf/ folder"
            raise InitFromError(
                f"model.init_from: {path} has neither a complete hf/ export ({export}) nor a complete "
                f"checkpoint in {path / 'checkpoints'}"
            )
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    named = saved.get("tokenizer", {}).get("path") or saved.get("model", {}).get("path")
    tokenizer = run / "tokenizer" if (run / "tokenizer").is_dir() else Path(named) if named else None
    if tokenizer is None or not tokenizer.exists():
        raise InitFromError(f"model.init_from: no tokenizer for {weights} (looked in {run / 'tokenizer'})")
    return weights, tokenizer


def init_note(path: str | Path) -> str | None:
    """Why ``model.init_from`` reads a checkpoint although RUN has an ``hf/`` folder (an incomplete one)."""
    hf = Path(path) / HF_DIR
    problem = hf_problem(hf) if hf.exists() else None
    return (
        f"model.init_from: {hf} is incomplete ({problem}); using the latest complete checkpoint"
        if problem
        else None
    )


def load_model_weights(model: torch.nn.Module, run: str | Path) -> Path:
    """Copy the weights of ``run`` (:func:`init_source`) into the unsharded ``model``; nothing else (no
    optimizer, schedule, data position). Every rank loads the whole model, as ``model.path`` does.
    Returns what was loaded; a model of another shape is an error naming the first differences."""
    source, _ = init_source(run)
    mine = model.state_dict()
    if source.name == HF_DIR:
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
        raise InitFromError(
            f"model.init_from: {source} does not fit the configured model ({len(problems)} differences: "
            f"{'; '.join(problems[:3])}); configure the same model as {run}/config.json"
        )
    if source.name == "hf":
        model.load_state_dict(weights)
    else:
        dcp.load({"model": {f"lm.{k}": v for k, v in mine.items()}}, checkpoint_id=str(source))
    return source
