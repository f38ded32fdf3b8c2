"""The command line that starts training: ``torchrun`` for several processes, plain Python for one.

Kept free of heavy imports so launchers (the demo, the ablation recipe, benchmarks, tests) stay light.
"""

from __future__ import annotations

import sys


def train_command(nproc: int, args: list[str]) -> list[str]:
    """``python -m clmap.torchrun --standalone --nproc_per_node=N -m clmap.train ARGS`` (torchrun that exits
    0 after a clean SIGTERM checkpoint, see clmap/torchrun.py)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "clmap.torchrun", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "clmap.train", *args]
