"""torchrun that exits 0 after a clean SIGTERM checkpoint: ``python -m clmap.torchrun`` + torchrun's args.

Why plain torchrun exits 1: on SIGTERM its agent forwards the signal to the workers, waits for them
(``--shutdown-timeout``, 30 s by default, then SIGKILL), and then re-raises the signal as an exception,
whatever the workers did: even when every worker saved its checkpoint and exited 0, the launcher's exit
status is 1. A scheduler then reports a clean preemption as a failure.

Here the launcher is told by the workers instead. torchrun is asked not to handle SIGTERM
(``--signals-to-handle`` without it); this process catches it, forwards it to its worker processes and
keeps waiting, so the agent sees the workers finish: all exit 0 (clmap.train saves a checkpoint and
leaves) and the launcher exits 0; a worker that fails makes it fail as usual. Ctrl-C (SIGINT) is
forwarded the same way (the workers, in their own sessions, do not see the terminal's). A second SIGTERM
or SIGINT aborts the workers at once, even in the middle of their save: torchrun's own shutdown is
started with SIGINT, which a worker already asked to save takes as a second Ctrl-C (it stops without
saving, exit status 130), where a repeated SIGTERM would be ignored (a scheduler may deliver one
preemption's SIGTERM to the workers directly and through this launcher) and the save would run on until
torchrun's SIGKILL after ``--shutdown-timeout``. The launcher then exits 128 + the second signal's number.
A worker that stops on a user error (exit status 2, its message already printed) makes the launcher exit
2 too, without torchrun's failure report.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

FORWARDED = ("SIGTERM", "SIGINT")  # forwarded to the workers, which save a checkpoint and exit
TORCHRUN_SIGNALS = ("SIGHUP", "SIGQUIT")  # torchrun's defaults, less the forwarded ones
ABORT = signal.SIGINT  # sent by torchrun's shutdown after a second signal: a worker's "second Ctrl-C"


def worker_pids() -> list[int]:
    """The processes this launcher started: its children, from /proc (Linux)."""
    me, pids = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def _with_signals(argv: list[str]) -> list[str]:
    """``argv`` with ``--signals-to-handle`` set (before the script: torchrun's own options come first)."""
    for i, arg in enumerate(argv):
        if arg.startswith(("--signals-to-handle", "--signals_to_handle")):
            value = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
            kept = ",".join(s for s in value.split(",") if s.strip() not in FORWARDED)
            rest = argv[i + 1 :] if "=" in arg else argv[i + 2 :]
            return [*argv[:i], f"--signals-to-handle={kept}", *rest]
    return [f"--signals-to-handle={','.join(TORCHRUN_SIGNALS)}", *argv]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException, _terminate_process_handler
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    argv = list(sys.argv[1:] if argv is None else argv)
    forwarded, second = False, None

    def on_signal(signum, frame):
        nonlocal forwarded, second
        pids = worker_pids()
        if forwarded:  # torchrun's shutdown, with the signal the workers take as "abort now"
            second = signal.Signals(signum)
            raise SignalException(f"Process {os.getpid()} got signal: {second}", sigval=ABORT)
        if not pids or not sys.platform.startswith("linux"):
            _terminate_process_handler(signum, frame)  # torchrun's own shutdown
        forwarded = True
        name = signal.Signals(signum).name
        print(f"clmap.torchrun: {name} forwarded to workers {pids}; waiting for them", file=sys.stderr)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for name in FORWARDED:
        signal.signal(getattr(signal, name), on_signal)
    try:
        torchrun(_with_signals(argv))
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        if first.exitcode == 2:
            return 2  # a user error, already printed by the worker
        raise
    except SignalException as exc:  # a signal before the workers ran, or a second one: torchrun stopped them
        if second is None:
            print(f"clmap.torchrun: {exc.sigval.name}: workers stopped", file=sys.stderr)
            return 128 + int(exc.sigval)
        print(f"clmap.torchrun: {second.name} again: workers aborted without saving", file=sys.stderr)
        return 128 + int(second)
    return 0


if __name__ == "__main__":
    sys.exit(main())
