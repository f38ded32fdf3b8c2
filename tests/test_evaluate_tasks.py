"""The task registry is the one list of task names: --help, --tasks and --data read it, and a bad
setting is refused up front in one line naming the flag and the rule."""

from __future__ import annotations

import pytest

from clmap.evaluate.__main__ import main
from clmap.evaluate.tasks import DATA_KEYS, TASKS


def test_help_lists_every_registered_task_and_data_key(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"comma list of {', '.join(TASKS)}" in text
    assert f"({', '.join(DATA_KEYS)})" in text
    assert "--batch-size BATCH_SIZE sequences per forward pass [int, default 8, range [1, inf)]" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "mt,bogus"], f"--tasks: unknown task(s) ['bogus']; choose from {', '.join(TASKS)}"),
        (["--data", "bogus=x"], f"--data keys ['bogus'] unknown; use {', '.join(DATA_KEYS)} (e.g. mt=PATH)"),
        (["--n-boot", "0"], "--n-boot: 0 is outside the allowed range [1, inf)"),
        (["--lac-layer", "-2"], "--lac-layer: -2 is outside the allowed range [-1, inf)"),
        (["--seed", "x"], "--seed: expected int, got 'x'"),
        (["--items", "all"], "--items: 'all' is not one of sample, first"),
    ],
)
def test_a_bad_setting_is_refused_before_any_work(tmp_path, capsys, argv, message):
    assert main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "eval"), *argv]) == 2
    assert capsys.readouterr().err == f"clmap.evaluate: error: {message}\n"
