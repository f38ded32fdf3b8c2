"""Where a command writes its results: checked before the work, locked while written, replaced atomically.

Every command that spends minutes before it writes (the evaluator, the store builder, the ablation) calls
:func:`writable_folder` on each output location first, so a path under a file, on a read-only file
system or under ``/proc`` is one line at once instead of a traceback after the work. The evaluator holds
:func:`output_lock` on its ``--out`` folder (the trainer's run-folder lock, ``clmap/run_folder.py``, on
another file), so two evaluations into one folder cannot silently lose one report, and writes its report
files with :func:`atomic_write_text`, so a reader never sees half a report.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clmap.cli import UserError
from clmap.run_folder import RunLock

OUTPUT_LOCK = "output.lock"


class OutputError(UserError):
    """An output location that cannot be written."""


def writable_folder(folder: str | Path, what: str) -> Path:
    """``folder``, created if missing, after writing and removing a probe file in it; ``OutputError``
    naming ``what`` (the option, e.g. ``--out``) and the reason otherwise."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        blocker = next((p for p in [path, *path.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
        raise OutputError(f"{what} {path} is not writable ({reason}); choose another folder") from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``path`` through a temporary file in the same folder and a rename: readers see the old
    file or the new one, never part of it (a crash leaves at most a ``.*.tmp`` beside it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def output_lock(folder: str | Path, activity: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``output.lock``: host, pid, start) for the ``with`` block; a
    second holder fails at once naming the first, a lock left by a dead process is taken over."""
    lock = RunLock(folder, OUTPUT_LOCK, activity)
    message = lock.acquire()
    if message:
        print(message, flush=True)
    try:
        yield Path(folder)
    finally:
        lock.release()
