"""Where a write-up's numbers come from: every number in ``docs/ablation*.md`` is generated from its
results files, or is a setting those files record.

A hand-typed number drifts: it survives a rerun that changed it, and nobody can tell which run it was
read from. The write-up's results are therefore generated (marked blocks and inline values,
:mod:`clmap.experiments.writeup`), and what is left outside them may only state settings:
:func:`unsourced_numbers` lists the numbers of a Markdown text, generated parts left out, that the
settings do not hold. The settings of a results file are the numbers of its ``meta`` (seeds, budgets,
item counts, and the numbers in its command and model strings) and the numeric values of the committed
config files it names (``meta.base`` and the variant and stage files beside it). A bag of every number
of the results would not do: with thousands of scores between 0 and 1, any made-up 0.xyz is one of them
at three decimals.

What is not checked, and why: fenced code blocks and inline code (commands and file names, not claims),
link targets and HTML comments (paths and block markers), and numbers glued to letters (``P@1``,
``fp32``, ``<2b>``, ``FSDP2``: names, not quantities). That the generated parts are what the results
files give is the regeneration's check (the test regenerates the page and compares).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomllib

# A number: digits with optional thousands groups (``4,915,200`` or ``2 400``), a fraction, an exponent;
# not part of a word, a path or a version (``P@1``, ``fp32``, ``Llama-3``, ``v2.1.3``).
NUMBER = re.compile(
    r"(?<![\w@/.\\])(?<!\w-)(?P<sign>[-+−]?)"
    r"(?P<int>\d{1,3}(?:(?:,| (?=\d{3}(?!\d)))\d{3})+|\d+)"
    r"(?P<frac>\.\d+)?(?P<exp>e[-+]?\d+)?"
    r"(?![\w@/]|\.\d)"
)
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
COMMENT = re.compile(r"<!--.*?-->", re.S)


@dataclass(frozen=True)
class Printed:
    """One number as a text prints it: its magnitude, its decimals, and where it stands."""

    value: float
    decimals: int  # digits after the point; None-like -1 for an exponent form (compared relatively)
    text: str
    line: int

    @property
    def is_integer(self) -> bool:
        return self.decimals == 0


def printed_numbers(text: str, *, prose: bool = True) -> list[Printed]:
    """The numbers of a Markdown text; with ``prose``, code, link targets and comments are left out
    (blanked, so line numbers stay right)."""
    if prose:
        for pattern in (CODE_BLOCK, COMMENT, INLINE_CODE, LINK_TARGET):
            text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    out = []
    for m in NUMBER.finditer(text):
        digits = m["int"].replace(",", "").replace(" ", "")
        frac, exp = m["frac"] or "", m["exp"] or ""
        value = abs(float(digits + frac + exp))
        decimals = -1 if exp else len(frac) - 1 if frac else 0
        out.append(Printed(value, decimals, m.group(0), text.count("\n", 0, m.start()) + 1))
    return out


class Sources:
    """The numbers a write-up may print: exact integers, and reals compared at the printed rounding."""

    def __init__(self) -> None:
        self.integers: set[int] = set()
        self.reals: list[tuple[float, float]] = []  # (magnitude, its own half-unit of rounding)

    def add(self, value: float, half_unit: float = 0.0, integer: bool = False) -> None:
        value = abs(float(value))
        if integer and value == int(value):
            self.integers.add(int(value))
        self.reals.append((value, half_unit))

    def add_json(self, data: object) -> None:
        """Every number of a JSON value (ints also as exact integers), and the numbers in its strings."""
        if isinstance(data, bool) or data is None:
            return
        if isinstance(data, int | float):
            self.add(data, integer=isinstance(data, int))
        elif isinstance(data, str):
            self.add_text(data)
        elif isinstance(data, dict):
            for value in data.values():
                self.add_json(value)
        elif isinstance(data, list):
            for value in data:
                self.add_json(value)

    def add_text(self, text: str) -> None:
        """The numbers of a text (a command, a model's name), each with the rounding it is printed at."""
        for p in printed_numbers(text, prose=False):
            half = 0.0 if p.decimals < 0 else 0.5 * 10.0**-p.decimals
            if p.decimals < 0:  # 6.4e-05: four significant digits
                half = 0.5e-3 * p.value
            self.add(p.value, half, integer=p.is_integer)

    def holds(self, p: Printed) -> bool:
        """Whether ``p`` is one of the sources' numbers at the rounding it is printed with: an integer
        only as an exact integer of the sources, a decimal within half a unit of its last digit (plus
        the source's own rounding)."""
        if p.is_integer and p.value in self.integers:
            return True
        mine = 0.5 * 10.0**-p.decimals if p.decimals > 0 else (0.5e-3 * p.value if p.decimals < 0 else None)
        if mine is None:
            return False
        return any(abs(p.value - v) <= mine + half + 1e-12 * max(1.0, v) for v, half in self.reals)


def settings_sources(paths: Iterable[Path], repo: Path) -> Sources:
    """The settings of results files: each one's ``meta`` and the config files it names."""
    sources = Sources()
    configs: set[Path] = set()
    for path in paths:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))["meta"]
        sources.add_json(meta)
        base = repo / str(meta.get("base", ""))
        if meta.get("base") and base.is_file():
            configs |= {base, *base.parent.rglob("*.toml")}
    for config in sorted(configs):
        sources.add_json(tomllib.loads(config.read_text(encoding="utf-8")))
    return sources


def strip_generated(text: str) -> str:
    """``text`` with the contents of its generated blocks and inline values blanked (lines kept)."""
    from clmap.experiments.writeup import BLOCK, INLINE

    blank = lambda m: (
        m.group(1) + re.sub(r"[^\n]", " ", m.group(0)[len(m.group(1)) : -len(m.group(3))]) + m.group(3)
    )  # noqa: E731
    return INLINE.sub(blank, BLOCK.sub(blank, text))


def unsourced_numbers(text: str, sources: Sources, allowed: Sequence[str] = ()) -> list[Printed]:
    """The numbers of ``text`` outside its generated parts that ``sources`` does not hold and
    ``allowed`` (exact printed texts, e.g. the 95 of "95 % intervals") does not list."""
    return [
        p
        for p in printed_numbers(strip_generated(text))
        if p.text.lstrip("+-−") not in allowed and not sources.holds(p)
    ]
