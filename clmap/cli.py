"""How clmap's command lines fail: one clear line and exit status 2 for a user error, a traceback for a bug.

A user error (a bad config value, unreadable input, a run folder that cannot be resumed as asked) is an
exception that subclasses :class:`UserError`, or one of the ``user_errors`` a command names. ``--debug``
(or ``CLMAP_DEBUG=1``) shows the full traceback instead. Under torchrun every rank raises the same error,
so only rank 0 prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"


class UserError(Exception):
    """An error the user can fix from its message alone; ``exit_code`` is the command's exit status."""

    exit_code = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(DEBUG_FLAG, action="store_true", help="on an error, show the full traceback")


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from`` / ``during handling`` chain."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def run_main(
    main: Callable[[list[str]], int | None],
    argv: Sequence[str] | None,
    prog: str,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """``main(argv)``'s exit status; a user error becomes ``prog: error: message`` on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("CLMAP_DEBUG", "") not in ("", "0")
    try:
        return main(args) or 0
    except KeyboardInterrupt:  # a second Ctrl-C (the trainer saves on the first), or any during set-up
        if debug:
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except (UserError, *user_errors) as exc:
        if debug:
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            message = str(exc).strip() or type(exc).__name__
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 2)
