"""Field checks for config validation: a check maps a value to what is wrong with it.

A check is ``fn(value) -> str | None``: None when the value is valid, else the end of the
sentence "``key = value``: must be ..." (kyx/train/validation.py adds the key and the
value). Choices may be a zero-argument function, read when the check runs, so names
registered later (a new loss, a new rule preset) are valid without editing the check.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable

from kyx.errors import ConfigError

Check = Callable[[Any], "str | None"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds(lo, hi, above, below) -> str:
    parts = [f">= {lo}" if lo is not None else None, f"> {above}" if above is not None else None,
             f"<= {hi}" if hi is not None else None, f"< {below}" if below is not None else None]
    return " and ".join(p for p in parts if p)


def integer(lo: int | None = None, hi: int | None = None, note: str = "") -> Check:
    """A whole number in [lo, hi] (either bound optional)."""
    want = f"must be a whole number {_bounds(lo, hi, None, None)}".rstrip()
    want += f" ({note})" if note else ""

    def check(value):
        ok = _is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
        return None if ok else want
    return check


def every() -> Check:
    """An interval in steps; 0 runs the action only after the last step."""
    return integer(lo=0, note="0: only at the end of the run")


def number(lo: float | None = None, hi: float | None = None, *, above: float | None = None,
           below: float | None = None) -> Check:
    """A finite number with inclusive (lo, hi) and exclusive (above, below) bounds."""
    want = f"must be a finite number {_bounds(lo, hi, above, below)}".rstrip()

    def check(value):
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            return want
        ok = ((lo is None or value >= lo) and (hi is None or value <= hi)
              and (above is None or value > above) and (below is None or value < below))
        return None if ok else want
    return check


def boolean() -> Check:
    return lambda value: None if isinstance(value, bool) else "must be true or false"


def one_of(choices: Iterable | Callable[[], Iterable]) -> Check:
    """One of ``choices`` (or of ``choices()``, read at check time); close names suggested."""
    def check(value):
        names = list(choices() if callable(choices) else choices)
        if value in names:
            return None
        close = difflib.get_close_matches(str(value), [str(n) for n in names], n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        shown = ", ".join("'' (empty)" if n == "" else str(n) for n in names)
        return f"must be one of {shown}{hint}"
    return check


def each(check: Check) -> Check:
    """A tuple or list whose every element passes ``check`` (e.g. names of sinks)."""
    def run(value):
        if not isinstance(value, (tuple, list)):
            return "must be a list, e.g. a,b on the command line"
        for item in value:
            what = check(item)
            if what:
                return f"has {item!r}, which {what}"
        return None
    return run


def parsed_by(parse: Callable[[Any], Any]) -> Check:
    """Valid when ``parse(value)`` raises no ConfigError (whose message is the problem)."""
    def check(value):
        try:
            parse(value)
        except ConfigError as e:
            return str(e)
        return None
    return check
