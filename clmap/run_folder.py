"""The run folder's contract: one training at a time, and a resume that trains what its checkpoints were.

**Lock.** Rank 0 holds an exclusive ``flock`` on ``run_dir/train.lock`` for the life of the run; the file
names the holder (host, pid, start time, command). The kernel drops the lock when its process dies, even
by SIGKILL, so a lock left by a dead process is taken over with a message, while a second training on the
same folder fails at once naming the holder. Under torchrun only rank 0 takes it and tells the other
ranks. torchrun starts its workers in their own sessions, so killing the launcher's process group leaves
them running, still holding the lock: the message says so (``stop_with_launcher`` makes such orphans
save a checkpoint and exit).

**Config drift.** ``run_dir/config.json`` records what the checkpoints were trained with. Resuming
compares every field against it, by the resume class its ``option(...)`` declares (clmap/config.py):

* ``SAFE``: may differ (steps, logging, checkpoint cadence, evaluation, devices): applied and printed.
* ``TRAINED``: alters what is trained (model shape, tokenizer, data mixture and stream, objective
  weights, seed, batch size, the optimizer and its learning-rate schedule): refused with an error naming
  each changed field with its old and new value, unless listed in ``--resume.allow_changes``; then it is
  applied from the resumed step and printed. The learning rate and the other optimizer settings are
  written into the restored optimizer and scheduler (which would otherwise keep the saved ones).
* ``NOT_COMPARED``: where the folder lives and how this one command resumes.

``config.json`` is rewritten only once the run has started (its checkpoint loaded), and every start is
appended to ``config_history.jsonl`` with the changes it accepted.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clmap.cli import UserError
from clmap.config import NOT_COMPARED, SAFE, TRAINED, Config, field_metadata, get_field

LOCK_FILE = "train.lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


class RunFolderError(UserError):
    """The run folder cannot be used: it cannot be created or locked."""


class RunFolderInUse(RunFolderError):
    """Another live process holds the run folder's lock."""


class ConfigDriftError(UserError):
    """A resume would train something other than what the run folder's checkpoints were trained with."""


@dataclass
class FieldChange:
    key: str
    old: object
    new: object
    rule: str

    def __str__(self) -> str:
        return f"{self.key} {json.dumps(self.old)} → {json.dumps(self.new)}"


# -- lock -------------------------------------------------------------------------------------------------
def _holder() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:500],
    }


def _describe_holder(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


class RunLock:
    """An exclusive, process-lifetime lock on a folder (see the module doc): a run folder's ``train.lock``,
    or another command's lock on its output folder (``clmap/outputs.py``), named by ``activity``."""

    def __init__(self, run_dir: str | Path, name: str = LOCK_FILE, activity: str = "training"):
        self.path = Path(run_dir) / name
        self.activity = activity
        self.fd: int | None = None
        self.holder: dict = {}

    def _read(self, fd: int | None = None) -> dict:
        try:
            if fd is None:
                text = self.path.read_text(encoding="utf-8")
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 1 << 16).decode("utf-8")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> str | None:
        """Take the lock; returns a message when it took over a lock left by a dead process."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._read()
                hint = (
                    " (a killed torchrun launcher can leave its workers running: stop them too), or use "
                    "another run_dir"
                    if self.activity == "training"
                    else ", or write to another folder"
                )
                raise RunFolderInUse(
                    f"{self.path.parent} is in use by another {self.activity}: {_describe_holder(holder)}, "
                    f"see {self.path}; wait for it or stop it{hint}"
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # else its holder removed it between our open and flock: try again
                break
            os.close(fd)
        previous = self._read(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self.holder = _holder()
        os.write(fd, (json.dumps(self.holder) + "\n").encode())
        os.fsync(fd)
        self.fd = fd
        if previous:
            return (
                f"took over the lock of {self.path.parent} left by {_describe_holder(previous)}, "
                "which no longer runs"
            )
        return None

    def release(self) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()  # while still holding it, so no one locks the old file meanwhile
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def stop_with_launcher() -> None:
    """Under torchrun: SIGTERM this worker when its launcher dies (it would otherwise run on, orphaned,
    holding the run folder), so it saves a checkpoint and exits. Linux only; elsewhere a no-op."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# -- config drift -----------------------------------------------------------------------------------------
def _saved_value(saved: dict, key: str, default):
    node = saved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default  # a field newer than the saved config: it had its default then
        node = node[part]
    return node


def _allowed(key: str, allow: list[str]) -> bool:
    return key in allow or key.split(".")[0] in allow


def config_changes(saved: dict, cfg: Config) -> list[FieldChange]:
    """Every compared field that differs from the saved config."""
    defaults = Config()
    changes = []
    for key, meta in field_metadata().items():
        rule = meta["resume"]
        if rule == NOT_COMPARED:
            continue
        old, new = _saved_value(saved, key, get_field(defaults, key)), get_field(cfg, key)
        if old != new:
            changes.append(FieldChange(key, old, new, rule))
    return changes


def read_saved_config(run_dir: Path) -> dict | None:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        return saved
    except (OSError, ValueError) as exc:
        raise ConfigDriftError(
            f"{path} is unreadable ({exc}); it records what the checkpoints were trained with: restore it, "
            "or start a new run_dir"
        ) from None


def check_resume_config(run_dir: Path, cfg: Config) -> list[FieldChange]:
    """The accepted changes against the run folder's config.json; ConfigDriftError for refused ones."""
    saved = read_saved_config(run_dir)
    if saved is None:
        return []
    changes = config_changes(saved, cfg)
    refused = [c for c in changes if c.rule == TRAINED and not _allowed(c.key, cfg.resume.allow_changes)]
    if refused:
        raise ConfigDriftError(
            f"{run_dir} was trained with another config; resuming would change what is trained: "
            + ", ".join(map(str, refused))
            + f". Pass --resume.allow_changes={','.join(c.key for c in refused)} to apply "
            + ("this change" if len(refused) == 1 else "these changes")
            + " from the resumed step, or use a new run_dir (or --checkpoint.resume=false to restart it)"
        )
    return changes


def describe_changes(changes: list[FieldChange]) -> str:
    notes = {SAFE: "", TRAINED: " (allowed by resume.allow_changes)"}
    return "; ".join(f"{c}{notes.get(c.rule, '')}" for c in changes)


def record_start(
    run_dir: Path, cfg: Config, step: int, changes: list[FieldChange], resumed_from: Path | None
):
    """After a successful start: write config.json (atomically) and append the start to the history."""
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    cfg.save(tmp)
    os.replace(tmp, run_dir / CONFIG_FILE)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "step": step,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "changes": {c.key: {"old": c.old, "new": c.new, "rule": c.rule} for c in changes},
    }
    with open(run_dir / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


# -- the tokenizer the checkpoints were trained with --------------------------------------------------------
# Its fingerprint (clmap.data.store.tokenizer_fingerprint, the one the token stores record too): a tokenizer
# replaced at the same path (the config unchanged) is named as such, not as a model-shape change.
def tokenizer_record(tok) -> dict:
    """What a checkpoint records of its tokenizer (``train_state.json``), compared on resume."""
    from clmap.data.store import tokenizer_fingerprint  # not at import: the store imports this module's lock

    return {"vocab_size": tok.vocab_size, "fingerprint": tokenizer_fingerprint(tok)}


def check_tokenizer(checkpoint: Path | None, tok, where: str) -> None:
    """ConfigDriftError when the tokenizer loaded from ``where`` is not the one ``checkpoint`` recorded
    (checkpoints of older clmap versions recorded none: not compared)."""
    if checkpoint is None:
        return
    try:
        saved = json.loads((checkpoint / "train_state.json").read_text(encoding="utf-8")).get("tokenizer")
    except (OSError, ValueError, AttributeError):
        return  # a damaged checkpoint: restore() names it and falls back
    now = tokenizer_record(tok)
    if not isinstance(saved, dict) or saved == now:
        return
    what = (
        f"vocabulary {saved.get('vocab_size')} → {now['vocab_size']} tokens"
        if saved.get("vocab_size") != now["vocab_size"]
        else "the same vocabulary size, another vocabulary"
    )
    raise ConfigDriftError(
        f"the tokenizer at {where} is not the one {checkpoint} was trained with ({what}): its files were "
        "replaced although the config names the same tokenizer; restore them, or start a new run_dir"
    )


# -- append-only logs ------------------------------------------------------------------------------------
METRICS_FILE = "metrics.jsonl"
# Every append-only file of a run folder, and whether its records are steps of the run (cut back to the
# resumed step) or events (a start recorded in the history stays, whatever step it came from).
APPEND_ONLY = {METRICS_FILE: True, HISTORY_FILE: False}


def repair_logs(run_dir: Path, step: int) -> list[str]:
    """Before a (re)start at ``step``: cut every append-only log back to its complete records (a crash
    while writing leaves half a line) and, for step logs, to ``step`` (a run stopped after its last
    checkpoint logged steps that the resumed run logs again); one message per file changed, saying what
    was dropped. A file is rewritten atomically."""
    messages = []
    for name, by_step in APPEND_ONLY.items():
        path = run_dir / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        kept, broken, beyond = [], 0, []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a record")
            except ValueError:
                broken += 1
                continue
            if by_step and not (isinstance(record.get("step"), int) and record["step"] <= step):
                beyond.append(record.get("step"))
                continue
            kept.append(line)
        text = b"".join(line + b"\n" for line in kept)
        if text == data:
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(text)
        os.replace(tmp, path)
        dropped = []
        if broken:
            dropped.append(f"{broken} incomplete or unreadable line{'s' * (broken > 1)}")
        if beyond:
            dropped.append(
                f"{len(beyond)} record{'s' * (len(beyond) > 1)} beyond step {step} (steps "
                f"{', '.join(map(str, beyond[:5]))}{', ...' if len(beyond) > 5 else ''})"
            )
        messages.append(f"repaired {path}: dropped {' and '.join(dropped) or 'a missing final newline'}")
    return messages


def lock_run_folder(run_dir: Path, rank: int, world_size: int) -> RunLock | None:
    """Rank 0 takes the lock and tells every rank whether it did; all raise the same error if not. The
    other ranks check that the lock they see (on a shared file system) is their rank 0's."""
    from clmap.parallel import from_main

    lock, outcome = None, None
    if rank == 0:
        lock = RunLock(run_dir)
        try:
            outcome = ("ok", lock.acquire(), lock.holder)
        except RunFolderInUse as exc:
            outcome = ("in use", str(exc), {})
        except OSError as exc:  # told to every rank, which would otherwise wait for rank 0 forever
            outcome = ("error", f"cannot lock the run folder {run_dir}: {exc}", {})
    status, message, holder = from_main(outcome, world_size)
    if status == "ok" and rank != 0:
        seen = RunLock(run_dir)._read()
        if seen and (seen.get("host"), seen.get("pid")) != (holder["host"], holder["pid"]):
            status, message = (
                "in use",
                f"{run_dir}: rank 0 locked it, but this rank sees {_describe_holder(seen)}",
            )
    if status != "ok":
        raise (RunFolderInUse if status == "in use" else RunFolderError)(message)
    if message and rank == 0:
        print(message, flush=True)
    return lock
