"""Checking values: the type and range checks every declaration uses (run fields' `knob`,
dataset and model `option`s, probe parameters), with their one-line errors. It imports nothing
of lrscope's but its errors, so the registries (train/data.py, train/models.py, train/recipes.py)
and the config (train/config.py) all build on it without importing one another at load time."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

# Upper bounds: far above any real run, low enough that a typo (10^12) is refused before it
# allocates terabytes or overflows an int64/int32 somewhere downstream.
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds
MAX_COUNT = 2**31 - 1  # steps, periods, batch and probe sizes: they fit an int32
MAX_WIDTH = 2**20  # an FCN layer's width
MAX_DEPTH = 1024  # an FCN's hidden layers
MAX_PARAMS = 2**31  # a model's parameters (8 GB as float32)


# ------------------------------------------------------------------------------- checking values
def number_text(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_range(kind: type, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, nullable=False,
              item: type | None = None) -> str:
    if choices is not None:
        text = "one of " + ", ".join(map(str, choices))
    elif kind is bool:
        text = "true or false"
    elif kind is str:
        text = "a string"
    elif kind is dict:
        text = "a table/object of options"
    elif kind is list:
        text = "a non-empty list of " + describe_range(item or int, lo, hi, lo_open, hi_open).replace("an integer",
                                                                                                "integers")
        return text + (" or null" if nullable else "")
    else:
        text = "an integer" if kind is int else "a finite number"
        if lo is not None and hi is not None:
            text += f" in {'(' if lo_open else '['}{number_text(lo)}, {number_text(hi)}{')' if hi_open else ']'}"
        elif lo is not None:
            text += f" {'>' if lo_open else '>='} {number_text(lo)}"
        elif hi is not None:
            text += f" {'<' if hi_open else '<='} {number_text(hi)}"
    return text + (" or null" if nullable else "")


def shown_value(v: Any) -> str:
    """A value as the user wrote it, with its type where the type is what is wrong."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, (int, float)):
        return f"{number_text(v)} ({type(v).__name__})" if isinstance(v, float) else str(v)
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(v).__name__})"


def check_value(label: str, v: Any, kind: type, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                choices=None, nullable: bool = False, item: type | None = None, error=ConfigError,
                choice_label: str | None = None, help: str = "") -> None:
    """Raise `error` unless `v` is a `kind` (bool is not a number, a float not an int, numbers
    finite) within [lo, hi] (open ends where asked) / among `choices` ("unknown {choice_label}
    ..."). Lists: non-empty lists of `item`s, each within the range. `help` is documentation
    (option declarations carry it), unused here."""
    def bad(shown: str | None = None):
        desc = describe_range(kind, lo, hi, lo_open, hi_open, choices, nullable, item)
        return error(f"{label} must be {desc}, got {shown if shown is not None else shown_value(v)}")

    if v is None:
        if nullable:
            return
        raise bad()
    if kind is list:
        if not isinstance(v, list) or not v:
            raise bad()
        if len(v) > MAX_DEPTH:
            raise error(f"{label}: at most {MAX_DEPTH} entries, got {len(v)}")
        for x in v:
            try:
                check_value(label, x, item or int, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, error=error)
            except error:
                raise bad(repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "...") from None
        return
    if kind is dict:
        if not isinstance(v, dict):
            raise bad()
        for k in v:
            if not isinstance(k, str):
                raise error(f"{label}: option names must be strings, got {shown_value(k)}")
        return
    if kind is bool:
        ok = isinstance(v, bool)
    elif kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise bad()
    if choices is not None:
        if v not in choices:
            raise error(f"unknown {choice_label or label} {v!r}; valid: {', '.join(map(str, choices))}")
        return
    if kind in (int, float):
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise bad()
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise bad()


def option(kind: type, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, nullable=False,
           help: str = "") -> dict:
    """A dataset's or model's option declaration: its type, range or choices (check_value's
    keywords) and help. Its default is the builder's keyword default (train/recipes.py,
    train/models.py)."""
    return {"kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices,
            "nullable": nullable, "help": help}
