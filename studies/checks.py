"""The checks every key of a study file uses (studies/validation.py, and a concept's own block such as
studies/adaptive.py's): a check raises `Invalid(key, message)`; `in_file` turns it into the one-line
SpaceError `path: key: message`."""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager

from iabf.config import ALONE, FIELD_TYPES, INT_MAX, Config, ConfigError, short, with_preset
from studies.space import NOT_SEARCHABLE, SET_BY_SEEDS, TOP, SpaceError, default

FIELDS = {f.name: f for f in dataclasses.fields(Config)}


class Invalid(Exception):
    """One key's problem, before the file's name is put in front of it (`in_file`)."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message


def fail(key: str, message: str):
    raise Invalid(key, message)


@contextmanager
def in_file(path: str):
    """An `Invalid` raised inside becomes the one-line SpaceError `path: key: message`."""
    try:
        yield
    except Invalid as e:
        raise SpaceError(f"{path}: {e.key}: {e.message}") from None


def check_keys(d, allowed, where: str) -> None:
    if not isinstance(d, dict):
        fail(where or "top level", f"expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            k = k if isinstance(k, str) else short(k)
            fail(f"{where}.{k}" if where else k, f"unknown key; allowed: {', '.join(allowed)}")


def number(value, key: str, lo: float, integer: bool = False, above: bool = False, hi: float = INT_MAX):
    """A finite number (an integer if asked) in [lo, hi] (or (lo, hi] if above): NaN, inf, bools and
    values beyond 32-bit integers are never valid here."""
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and \
        math.isfinite(value) and (value > lo if above else value >= lo) and value <= hi
    if not ok:
        fail(key, f"expected {'an integer' if integer else 'a number'} {'>' if above else '>='} {lo:g} "
                  f"and <= {hi:g}, got {short(value)}")
    return value


def in_span(value, key: str, span: dict, lo: float | None = None):
    """number() within a JSON-schema span declared beside its key (studies/space.py); lo: a tighter minimum."""
    return number(value, key, span["minimum"] if lo is None else lo, integer=span["type"] == "integer",
                  hi=span.get("maximum", INT_MAX))


def top_int(raw: dict, key: str) -> int:
    """An integer top-level key within its declared span (studies/space.py: TOP), or its default."""
    lo, hi = TOP[key].span
    return number(raw.get(key, default(key)), key, lo, integer=True, hi=hi)


def want(value, types, key: str, what: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)) \
            or not isinstance(value, types):
        fail(key, f"expected {what}, got {short(value)}")
    return value


def check_choice(raw: dict, key: str, allowed: tuple, refusal: str):
    value = raw.get(key, default(key))
    if value not in allowed:
        fail(key, f"{short(value)} {refusal}")
    return value


def check_value(name, value, key: str) -> None:
    """One Config field at one value: Config's own checks (iabf/config.py: Allowed), plus no study at eps = 0.5."""
    if name not in FIELD_TYPES:
        fail(key, f"unknown parameter {short(name)}; parameters: {', '.join(FIELD_TYPES)}")
    if name in NOT_SEARCHABLE and key.split(".")[0] != "fixed" or name in SET_BY_SEEDS:
        where = "`seeds`" if name == "seed" else "`stack`" if name == "stack" else "the command line"
        fail(key, f"{name} is set by {where}, not here")
    try:   # the field alone (examples_seen is read with max_train_examples: the pair is checked per group)
        Config.from_dict({name: value, **ALONE.get(name, {})})
    except ConfigError as e:
        fail(key, str(e))
    below = FIELDS[name].metadata["allowed"] and FIELDS[name].metadata["allowed"].study_below
    if below is not None and value >= below:
        fail(key, f"{name}={short(value)} is not allowed in a study: a channel at {below:g} carries nothing; use values "
                  f"below {below:g}")


def preset(values: dict, where: str) -> dict:
    """values with a `preset` (iabf.config.PRESETS) replaced by what it stands for."""
    try:
        return with_preset(values)
    except ConfigError as e:
        fail(f"{where}.preset", str(e))


def seed_list(value, key: str) -> list:
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= INT_MAX for s in value):
        fail(key, f"expected a non-empty list of integers >= 0, got {short(value)}")
    if len(set(value)) != len(value):
        fail(key, f"repeated seeds in {short(value)}")
    return value
