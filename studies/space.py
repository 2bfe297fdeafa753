"""Search spaces: a YAML file per study (schema in search_spaces/README.md), validated in full
before anything starts. `studies/plan.py` says what a Study's trials are (cells, search, confirmation).

Every error names the file, the key and what is allowed, as one line (`SpaceError`).
"""
from __future__ import annotations

import codecs
import copy
import json
import math
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from iabf import metrics as M
from iabf.config import ARCH_KIND, FIELD_TYPES, INT_MAX, Config, ConfigError, one_line, short, with_preset
from iabf.datasets import SPECS
from studies.plan import cell_axes, plan

SEARCHERS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
METRICS = tuple(v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and v != M.STATE)   # reported


@dataclass(frozen=True)
class Key:
    """One top-level key of a study file, declared once: its default (what `validate` and `Study` use
    when the key is absent), its JSON Schema (studies/schema.py: search_spaces/schema.json) and its row of
    search_spaces/README.md's table (a test keeps the README equal to `python -m studies.schema --markdown`).
    The rules between keys, ranges included, are `validate`'s."""
    kind: str                 # the README's "type" column
    default: object           # REQUIRED, or the value an absent key takes
    doc: str                  # the README's "meaning"
    schema: dict              # JSON Schema; #/$defs/... are studies/schema.py's
    shown: str = ""           # the README's "default" column where it is not the value itself


REQUIRED = object()
DISPLAY = re.compile(r"[\w .,()+/-]{1,60}")   # what a LaTeX and a Markdown table print as they are (_ is escaped)
SEEDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True}
TOP = {
    "study": Key("name (letters, digits, `-`, `_`)", REQUIRED, "MLflow experiment name and results folder prefix",
                 {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "the MLflow experiment"}, "required"),
    "description": Key("text", "", "shown on the study's parent run in MLflow", {"type": "string"}, '`""`'),
    "dataset": Key("dataset", Config().dataset, "shorthand for `fixed.dataset`",
                   {"$ref": "#/$defs/values/properties/dataset"}),
    "fixed": Key("{parameter: value}", {}, "held constant; parameters are the fields of `iabf/config.py` "
                 "(`python -m iabf.train --help`)",
                 {"$ref": "#/$defs/values", "description": "held constant for every trial"}),
    "by_dataset": Key("{dataset: {parameter: value}}", {}, "values held constant for one dataset's trials, over "
                      "`fixed` (an arm's own values win): a budget per dataset (`epochs`, `max_train_examples`, "
                      "`val_subset`) in a study over several; every arm of a cell gets the same. Not for searched or "
                      "cell parameters",
                      {"type": "object", "additionalProperties": {"$ref": "#/$defs/values"},
                       "description": "values fixed per dataset, over fixed (a budget per dataset)"}),
    "display": Key("{dataset: name}", {}, "the name tables and figures print for a dataset of one's own (a "
                   "`<name>.npz`; by default its file name); the paper's datasets keep theirs. Its spec's other "
                   "fields are `likelihood` and `n_valid`, set like any parameter (in `fixed` or `by_dataset`)",
                   {"type": "object", "additionalProperties": {"type": "string", "pattern": f"^{DISPLAY.pattern}$"},
                    "description": "a display name per dataset of one's own"}),
    "search": Key("{parameter: {distribution: args}}", {}, "searched for every arm; a cell parameter (dataset, "
                  "channel, n_bits, eps or test_eps) takes a list, each value a cell of its own",
                  {"$ref": "#/$defs/search"}),
    "variants": Key("list of arms", [], "each a row of the table: `{method: iabf, ...values, name: ..., search: "
                    "{...}}`; `search` inside an arm is searched for that arm only (lambda for IABF); `name` defaults "
                    "to the method, plus what tells it from other arms of that method",
                    {"type": "array", "items": {"$ref": "#/$defs/arm"}, "description": "the arms: rows of the table"},
                    "one arm"),
    "cells": Key("list of parameters", None, "what makes a table cell; e.g. `[dataset, eps, K, flip_budget]` "
                 "reports every K and budget instead of choosing one",
                 {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"$ref": "#/$defs/searchable"},
                  "description": "the parameters that make a table cell (default: dataset, channel, bits, test eps)"},
                 "dataset, channel, bits, test eps"),
    "seeds": Key("list of int", [0], "the confirmation seeds: n per table entry",
                 {**SEEDS, "description": "the confirmation seeds (n per table entry)"}),
    "search_seeds": Key("list of int", None, "the seeds one search trial trains (several: one stacked trial, judged "
                        "on their mean); never overlapping `seeds`",
                        {**SEEDS, "description": "the search's seeds (a stack if several)"}, "`[max(seeds) + 1]`"),
    "stack": Key("`auto` or int >= 1", "auto", "seeds per confirmation trial, trained as one vmapped model "
                 "(`iabf/stacked.py`), each seed still its own MLflow run; `auto`: all seeds in one trial where the "
                 "dataset's model allows it (MLP datasets, consecutive seeds), else 1; `--stack S` overrides it",
                 {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]}),
    "confirm": Key("bool", True, "run the confirmation phase (see above)", {"type": "boolean"}),
    "searcher": Key("`grid`, `random`, `optuna`", "grid", "`grid`: every combination of `grid` values; `random` / "
                    "`optuna`: `num_samples` draws per group from Optuna's random or TPE sampler, seeded by the group",
                    {"enum": list(SEARCHERS)}),
    "scheduler": Key("`none` or {name: asha, max_t, grace_period, reduction_factor}", "none", "ASHA early stopping in "
                     "the search, one per group, time in epochs; `max_t` defaults to `epochs`",
                     {"anyOf": [{"const": "none"}, {
                         "type": "object", "additionalProperties": False,
                         "properties": {"name": {"enum": ["asha", "none"]}, "max_t": {"type": "integer", "minimum": 1},
                                        "grace_period": {"type": "integer", "minimum": 1},
                                        "reduction_factor": {"type": "number", "minimum": 2}}}]}),
    "metric": Key("a reported metric", M.VAL_DISTORTION, "what ASHA, Optuna and the choice of a configuration "
                  "optimise", {"enum": list(METRICS)}),
    "mode": Key("`min`/`max`", "min", "whether `metric` is minimised or maximised", {"enum": ["min", "max"]}),
    "num_samples": Key("int >= 1", 1, "draws per group (`random`, `optuna`); a grid runs once",
                       {"type": "integer", "minimum": 1}),
    "resources": Key("{cpu: >0, gpu: >=0}", {"cpu": 1, "gpu": 0}, "per trial; a GPU fraction packs several trials "
                     "on one GPU",
                     {"type": "object", "additionalProperties": False,
                      "properties": {"cpu": {"type": "number", "exclusiveMinimum": 0},
                                     "gpu": {"type": "number", "minimum": 0}}}),
    "max_concurrent": Key("int >= 0", 0, "at most this many trials at once (0: as many as the resources allow)",
                          {"type": "integer", "minimum": 0}),
    "chain_steps": Key("int >= 1", 9000, "Markov-chain steps (eq. 32) for each confirmed run's samples "
                       "(`--chain-steps` overrides)", {"type": "integer", "minimum": 1}),
}
TOP_KEYS = tuple(TOP)


def default(key: str):
    """An absent top-level key's value (a copy: the declaration's lists and mappings are never shared)."""
    return copy.deepcopy(TOP[key].default)
ARM_KEYS = ("name", "search", "preset")          # besides Config fields
ASHA_KEYS = ("name", "max_t", "grace_period", "reduction_factor")
RESOURCE_KEYS = ("cpu", "gpu")
NOT_SEARCHABLE = ("seed", "stack", "data_dir", "device", "download")  # set by `seeds`, `stack`, the command line
MAX_BYTES = 1 << 20   # a search space is a short YAML file; anything bigger is not one
# Trials one study may plan (both phases). Far above any real study (table1.yaml: 336), and what the
# driver plans in seconds and tens of MB (a trial's bookkeeping is ~1 kB, and Tune's driver adds
# ~0.3 s per trial: 10,000 is an hour of it): a bigger plan is a mistake, refused before anything
# is built.
MAX_TRIALS = 10_000


class SpaceError(ValueError):
    """A search-space file that is not valid; the message names file, key and what is allowed, on
    one line (a value or key quoted from the file cannot break it)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


@dataclass
class Arm:
    """One variant of the method (a row of the table): the values it fixes and what it searches."""
    name: str
    fixed: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)


def _top(key: str):   # a Study field's default: the declaration's (TOP)
    return field(default_factory=lambda: default(key))


@dataclass
class Study:
    """A validated study; its defaults are TOP's (an absent key), as `validate` fills them."""
    name: str
    path: str
    fixed: dict = _top("fixed")                      # Config field -> value
    by_dataset: dict = _top("by_dataset")            # dataset -> {Config field: value}, over `fixed` for that dataset
    display: dict = _top("display")                  # dataset of one's own -> the name its tables print
    search: dict = _top("search")                    # Config field -> {distribution: args}, every arm
    arms: list = field(default_factory=lambda: [Arm("")])   # list of Arm; one unnamed arm if none
    seeds: list = _top("seeds")                      # confirmation seeds (n per table entry)
    search_seeds: list = field(default_factory=lambda: [max(default("seeds")) + 1])   # a search trial's seeds
    stack: int | str = _top("stack")                 # seeds per confirmation trial; auto: all where possible
    confirm: bool = _top("confirm")
    cells: list | None = _top("cells")               # Config fields making a table cell; None: the paper's
    searcher: str = _top("searcher")
    scheduler: dict | None = None                    # {"max_t", "grace_period", "reduction_factor"}; None: none
    metric: str = _top("metric")
    mode: str = _top("mode")
    num_samples: int = _top("num_samples")           # samples per group (random, optuna)
    resources: dict = _top("resources")
    max_concurrent: int = _top("max_concurrent")
    description: str = _top("description")
    chain_steps: int = _top("chain_steps")           # Markov-chain steps for each finished trial's samples (eq. 32)

    def datasets(self) -> list[str]:
        found = {*next(iter(self.search["dataset"].values()))} if "dataset" in self.search else \
            {self.fixed.get("dataset", Config().dataset)}
        return sorted(found)

    def n_trials(self) -> int:
        return plan(self)["trials"]

    def fixed_for(self, dataset: str) -> dict:
        """The values every trial on `dataset` holds fixed: `fixed`, then its `by_dataset` entry."""
        return {**self.fixed, **self.by_dataset.get(dataset, {})}

    def stack_for(self, dataset: str) -> int:
        """Seeds per confirmation trial for a dataset: `stack`, or with auto every seed in one
        stacked trial where the dataset's model can be stacked and the seeds are consecutive."""
        if self.stack != "auto":
            return self.stack
        consecutive = self.seeds == list(range(self.seeds[0], self.seeds[0] + len(self.seeds)))
        # a dataset of one's own is not stacked by auto (its model is known only from its file)
        stackable = ARCH_KIND.get(dataset) == "mlp" and self.fixed_for(dataset).get("compile", "off") == "off"
        return len(self.seeds) if consecutive and stackable else 1


# --- reading a file ----------------------------------------------------------------------------------

def load_study(path: str | Path) -> Study:
    """Read and validate a space file. Only a small regular file is read (never a FIFO, a device
    or a folder: reading those can block or never end); UTF-8 or UTF-16/32 with a byte-order mark."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search-space file") from None
    except (OSError, ValueError) as e:   # ValueError: a NUL in the name
        raise SpaceError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpaceError(f"{path}: not a regular file; a search space is a YAML file")
    if info.st_size > MAX_BYTES:
        raise SpaceError(f"{path}: {info.st_size} bytes; a search space is a YAML file of at most {MAX_BYTES} bytes")
    try:
        raw = yaml.safe_load(decode(path.read_bytes(), path))
    except OSError as e:
        raise SpaceError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise SpaceError(f"{path}: nested too deeply to be a search space") from None
    except ValueError as e:   # e.g. an integer of more than 4300 digits, which Python refuses to parse
        raise SpaceError(f"{path}: not a valid search space: {e}") from None
    try:
        return validate(raw, str(path))
    except RecursionError:
        raise SpaceError(f"{path}: nested too deeply to be a search space") from None


BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode(data: bytes, path: Path) -> str:
    """YAML's encodings (YAML 1.2, 5.2): UTF-8, or UTF-16/32 announced by a byte-order mark."""
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte {e.start}); "
                         f"save the search space as UTF-8") from None
    if "\0" in text:
        raise SpaceError(f"{path}: contains a NUL character; not a text file")
    return text


# --- validation ----------------------------------------------------------------------------------------

def validate(raw, path: str) -> Study:
    def fail(key: str, msg: str):
        raise SpaceError(f"{path}: {key}: {msg}")

    def check_keys(d, allowed, where):
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

    def want(value, types, key, what):
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)) \
                or not isinstance(value, types):
            fail(key, f"expected {what}, got {short(value)}")
        return value

    def check_value(name, value, key: str):
        """One Config field at one value: Config's own checks, plus no study at eps = 0.5."""
        if name not in FIELD_TYPES:
            fail(key, f"unknown parameter {short(name)}; parameters: {', '.join(FIELD_TYPES)}")
        if name in NOT_SEARCHABLE and key.split(".")[0] != "fixed" or name in ("seed", "stack"):
            where = "`seeds`" if name == "seed" else "`stack`" if name == "stack" else "the command line"
            fail(key, f"{name} is set by {where}, not here")
        try:
            Config.from_dict({name: value})
        except ConfigError as e:
            fail(key, str(e))
        if name in ("eps", "test_eps") and value == 0.5:
            fail(key, f"{name}=0.5 is not allowed in a study: a channel at 0.5 carries nothing; use [0, 0.5)")

    def check_search(spec_map, where: str, is_cell) -> dict:
        """{parameter: {distribution: args}}; a parameter that makes cells takes a list of values."""
        spec_map = want(spec_map or {}, dict, where, "a mapping of parameter: {distribution: values}")
        for k, spec in spec_map.items():
            key = f"{where}.{k}"
            if k in fixed:
                fail(key, "also set in fixed; a parameter is either fixed or searched")
            if not isinstance(spec, dict) or len(spec) != 1:
                fail(key, f"expected one of {{{', '.join(f'{d}: ...' for d in DISTRIBUTIONS)}}}")
            kind, args = next(iter(spec.items()))
            if kind not in DISTRIBUTIONS:
                fail(key, f"unknown distribution {short(kind)}; allowed: {', '.join(DISTRIBUTIONS)}")
            key = f"{key}.{kind}"
            if not isinstance(args, list) or not args:
                fail(key, "expected a non-empty list" + ("" if kind in ("grid", "choice") else " [low, high]"))
            if is_cell(k) and kind not in ("grid", "choice"):
                fail(key, f"{k} decides the table cell, so each of its values is a cell: give a list (grid)")
            if not is_cell(k) and searcher == "grid" and kind != "grid":
                fail(key, f"{kind} is sampled: use searcher: random or optuna, or a grid")
            if not is_cell(k) and searcher != "grid" and kind == "grid":
                fail(key, f"grid is not allowed with the {searcher} searcher (it samples); use choice")
            if kind in ("grid", "choice"):
                for i, v in enumerate(args):
                    check_value(k, v, f"{key}[{i}]")
                if len(set(map(repr, args))) != len(args):
                    fail(key, f"repeated values in {short(args)}")
                continue
            if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                         and math.isfinite(a) for a in args):
                fail(key, f"expected [low, high] finite numbers, got {short(args)}")
            lo, hi = args
            if not lo < hi:
                fail(key, f"low {lo} must be below high {hi}")
            if kind == "loguniform" and lo <= 0:
                fail(key, f"loguniform needs low > 0, got {lo}")
            if kind == "randint" and FIELD_TYPES.get(k) != "int":
                fail(key, f"randint is for integer parameters; {k} is a {FIELD_TYPES.get(k)}")
            if kind != "randint" and FIELD_TYPES.get(k) != "float":
                fail(key, f"{kind} is for float parameters; {k} is a {FIELD_TYPES.get(k)}")
            for v in (lo, hi - 1 if kind == "randint" else hi):
                check_value(k, v, key)
        return dict(spec_map)

    def seed_list(value, key: str) -> list:
        if not isinstance(value, list) or not value or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= INT_MAX for s in value):
            fail(key, f"expected a non-empty list of integers >= 0, got {short(value)}")
        if len(set(value)) != len(value):
            fail(key, f"repeated seeds in {short(value)}")
        return value

    if raw is None:
        fail("top level", "the file is empty")
    check_keys(raw, TOP_KEYS, "")
    if "study" not in raw:
        fail("study", "missing; every space names its study (letters, digits, '-', '_')")
    name = want(raw["study"], str, "study", "a name")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        fail("study", f"{short(name)} is not allowed: letters, digits, '-' and '_' only")

    def preset(values: dict, where: str) -> dict:
        """values with a `preset` (iabf.config.PRESETS) replaced by what it stands for."""
        try:
            return with_preset(values)
        except ConfigError as e:
            fail(f"{where}.preset", str(e))

    fixed = dict(want(raw.get("fixed") or default("fixed"), dict, "fixed", "a mapping of parameter: value"))
    if "dataset" in raw:
        fixed["dataset"] = raw["dataset"]
    fixed = preset(fixed, "fixed")
    for k, v in fixed.items():
        check_value(k, v, f"fixed.{k}")

    searcher = raw.get("searcher", default("searcher"))
    if searcher not in SEARCHERS:
        fail("searcher", f"{short(searcher)} is not allowed: one of {', '.join(SEARCHERS)}")

    cells = raw.get("cells", default("cells"))
    if cells is not None:
        if not isinstance(cells, list) or not cells or len(set(map(repr, cells))) != len(cells) or \
                not all(isinstance(c, str) and c in FIELD_TYPES and c not in NOT_SEARCHABLE for c in cells):
            fail("cells", f"expected a list of distinct parameters ({', '.join(FIELD_TYPES)}), got {short(cells)}")

    def is_cell(k) -> bool:   # the same rule as is_cell_key, before the Study exists
        if cells is not None:
            return k in cells
        return k in ("dataset", "channel", "n_bits", "test_eps") or (k == "eps" and fixed.get("test_eps", -1.0) < 0)

    search = check_search(raw.get("search"), "search", is_cell)

    # per-dataset values (a budget that differs by dataset): over `fixed`, under an arm's own values
    by_dataset = dict(want(raw.get("by_dataset") or default("by_dataset"), dict, "by_dataset", "a mapping of dataset: {parameter: value}"))
    datasets = search["dataset"][next(iter(search["dataset"]))] if "dataset" in search else \
        [fixed.get("dataset", Config().dataset)]
    def of_study(where: str, d) -> str:   # a per-dataset key names one of the study's datasets
        key = f"{where}.{d if isinstance(d, str) else short(d)}"
        if d not in datasets:
            fail(key, f"not a dataset of this study; its datasets: {', '.join(map(str, datasets))}")
        return key

    for d, values in by_dataset.items():
        of_study("by_dataset", d)
        values = want(values, dict, f"by_dataset.{d}", "a mapping of parameter: value")
        for k, v in values.items():
            key = f"by_dataset.{d}.{k if isinstance(k, str) else short(k)}"
            if k == "dataset" or k in search or is_cell(k):
                fail(key, "searched or a cell parameter; by_dataset holds values fixed per dataset")
            check_value(k, v, key)
        by_dataset[d] = dict(values)

    display = dict(want(raw.get("display") or default("display"), dict, "display", "a mapping of dataset: name"))
    for d, text in display.items():
        key = of_study("display", d)
        if d in SPECS:
            fail(key, f"{d} is one of the paper's datasets and keeps its name ({SPECS[d].display}); display names a "
                      f"dataset of one's own")
        if not isinstance(text, str) or not DISPLAY.fullmatch(text):
            fail(key, f"{short(text)} is not allowed: up to 60 letters, digits, spaces and . , ( ) + / - _")

    arms, expanded = [], []          # arms as written (they are named by their preset), and their values
    for i, arm in enumerate(want(raw.get("variants") or default("variants"), list, "variants", "a list of arms {parameter: value}")):
        where = f"variants[{i}]"
        check_keys(arm, (*FIELD_TYPES, *ARM_KEYS), where)
        shown = {k: v for k, v in arm.items() if k not in ("name", "search")}   # what names it
        own = preset(shown, where)
        for k, v in own.items():
            if k in search:
                fail(f"{where}.{k}", "also searched; an arm fixes parameters the search does not touch")
            if is_cell(k):
                fail(f"{where}.{k}", f"{k} decides the table cell; set it in fixed or search, for every arm")
            check_value(k, v, f"{where}.{k}")
        arm_search = check_search(arm.get("search"), f"{where}.search", lambda k: False)
        for k in arm_search:
            if k in search or k in own or is_cell(k) or any(k in v for v in by_dataset.values()):
                fail(f"{where}.search.{k}", "already fixed or searched for every arm, or a cell parameter")
        label = arm.get("name", None)
        if label is not None and (not isinstance(label, str) or not re.fullmatch(r"[\w .=+-]{1,40}", label)):
            fail(f"{where}.name", f"{short(label)} is not allowed: up to 40 letters, digits, spaces and . = + -")
        arms.append(Arm(label or "", shown, arm_search))
        expanded.append(own)
    if len({json.dumps([a.fixed, a.search], sort_keys=True) for a in arms}) != len(arms):
        fail("variants", "two arms are the same")
    arms = [replace(a, fixed=own) for a, own in zip(name_arms(arms), expanded)]
    if len({a.name for a in arms}) != len(arms):
        fail("variants", f"two arms have the same name {short(sorted(a.name for a in arms))}; name them (name: ...)")

    seeds = seed_list(raw.get("seeds", default("seeds")), "seeds")
    default_search = [max(seeds) + 1]
    search_seeds = seed_list(raw.get("search_seeds", default_search), "search_seeds")
    if set(search_seeds) & set(seeds):
        fail("search_seeds", f"{short(search_seeds)} overlaps seeds {short(seeds)}: the confirmation would report "
                             f"numbers the choice was made on; use other seeds")
    confirm = raw.get("confirm", default("confirm"))
    if not isinstance(confirm, bool):
        fail("confirm", f"expected true or false, got {short(confirm)}")
    stack = raw.get("stack", default("stack"))

    scheduler = raw.get("scheduler", default("scheduler"))
    if scheduler == "none" or scheduler == {"name": "none"}:
        scheduler = None
    else:
        check_keys(scheduler, ASHA_KEYS, "scheduler")
        if scheduler.get("name") != "asha":
            fail("scheduler.name", f"{short(scheduler.get('name'))} is not allowed: asha or none")
        epochs = max({**fixed, **by_dataset.get(d, {})}.get("epochs", Config().epochs) for d in datasets)
        scheduler = {"max_t": scheduler.get("max_t", epochs), "grace_period": scheduler.get("grace_period", 1),
                     "reduction_factor": scheduler.get("reduction_factor", 2)}
        number(scheduler["max_t"], "scheduler.max_t", 1, integer=True)
        number(scheduler["grace_period"], "scheduler.grace_period", 1, integer=True)
        number(scheduler["reduction_factor"], "scheduler.reduction_factor", 2, hi=1000)
        if scheduler["grace_period"] > scheduler["max_t"]:
            fail("scheduler.grace_period", f"{scheduler['grace_period']} exceeds max_t {scheduler['max_t']}")

    metric = raw.get("metric", default("metric"))
    if metric not in METRICS:
        fail("metric", f"{short(metric)} is not a reported metric; one of {', '.join(METRICS)}")
    mode = raw.get("mode", default("mode"))
    if mode not in ("min", "max"):
        fail("mode", f"{short(mode)} is not allowed: min or max")
    num_samples = number(raw.get("num_samples", default("num_samples")), "num_samples", 1, integer=True, hi=100_000)
    if searcher == "grid" and num_samples != 1:
        fail("num_samples", "a grid is run once (repeats are `seeds`); num_samples is for random and optuna")
    resources = {**default("resources"), **want(raw.get("resources") or {}, dict, "resources", "{cpu: N, gpu: N}")}
    check_keys(resources, RESOURCE_KEYS, "resources")
    number(resources["cpu"], "resources.cpu", 0, above=True, hi=10_000)
    number(resources["gpu"], "resources.gpu", 0, hi=10_000)
    check_gpu(resources["gpu"], f"{path}: resources.gpu")
    max_concurrent = number(raw.get("max_concurrent", default("max_concurrent")), "max_concurrent", 0, integer=True)
    description = want(raw.get("description", default("description")), str, "description", "text")
    chain_steps = number(raw.get("chain_steps", default("chain_steps")), "chain_steps", 1, integer=True, hi=10**7)
    arms = arms or [Arm(fixed.get("method", Config().method))]   # no variants: one arm, named by its method
    return check_size(Study(name=name, path=path, fixed=fixed, by_dataset=by_dataset, display=display, search=search, arms=arms,
                             seeds=seeds, search_seeds=search_seeds, stack=stack, confirm=confirm, cells=cells,
                             searcher=searcher, scheduler=scheduler, metric=metric, mode=mode,
                             num_samples=num_samples, resources=resources, max_concurrent=max_concurrent,
                             description=description, chain_steps=chain_steps))


def check_size(study: Study) -> Study:
    """Refuse a study that plans more than MAX_TRIALS trials, counted from the sizes of its lists,
    before any configuration, group or trial is built (a 10^10-point grid is 80 bytes of YAML)."""
    search_cells = cell_axes(study)
    cells = math.prod(len(values) for values in search_cells.values())
    worst, worst_text, trials = 1, "", 0
    for arm in study.arms:
        space = {**{k: v for k, v in study.search.items() if k not in search_cells}, **arm.search}
        sizes = [len(next(iter(spec.values()))) for spec in space.values()]
        sampled = any(next(iter(spec)) != "grid" for spec in space.values())
        n = study.num_samples if sampled else math.prod(sizes)
        if n > worst:
            worst, worst_text = n, (f"num_samples {n:,}" if sampled else
                                    f"grid {' x '.join(map(str, sizes))} = {n:,} configurations")
        # an upper bound: every configuration searched, every seed its own trial
        trials += n * (1 if study.confirm else len(study.seeds)) + (len(study.seeds) if study.confirm else 0)
    trials *= cells
    if trials > MAX_TRIALS:
        key = "num_samples" if worst_text.startswith("num_samples") else "search"
        raise SpaceError(f"{study.path}: {key}: the study plans up to {trials:,} trials ({cells:,} cell(s) x "
                         f"{len(study.arms)} arm(s); {worst_text or 'one configuration'} per cell and arm); at most "
                         f"{MAX_TRIALS:,} are allowed: shrink the grids or num_samples, or split the study")
    return check_stack(study)


def name_arms(arms: list[Arm]) -> list[Arm]:
    """An unnamed arm is named by its method, and by the values that tell it from the other arms of
    that method when there are several (`iabf flip=topk`)."""
    out = []
    for arm in arms:
        if arm.name:
            out.append(arm)
            continue
        method = arm.fixed.get("method", "")
        same = [a for a in arms if a.fixed.get("method", "") == method]
        preset = arm.fixed.get("preset", "paper")          # the paper's version goes unsaid
        values = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(arm.fixed.items())
                  if k not in ("method", "preset") and len(same) > 1]
        parts = [method, *([preset] if preset != "paper" else []), *values]
        out.append(replace(arm, name=" ".join(p for p in parts if p) or "default"))
    return out


def check_gpu(gpu: float, where: str) -> float:
    """GPUs per trial: a fraction below 1 packs trials on a GPU; above 1, whole GPUs only."""
    if gpu > 1 and gpu != int(gpu):
        raise SpaceError(f"{where}: {gpu:g} is not allowed: a fraction below 1 or a whole number")
    return gpu


def check_stack(study: Study) -> Study:
    """`stack: S` trains the confirmation seeds in groups of S consecutive ones, each group one trial
    (auto: all of them where the dataset allows); a search on several seeds is one stacked trial.
    Stacking needs MLP datasets (Config says which). Seeds are repeats, never contestants: ASHA and
    sampled searches judge a configuration on one trial."""
    fail = lambda key, msg: (_ for _ in ()).throw(SpaceError(f"{study.path}: {key}: {msg}"))  # noqa: E731
    seeds, stack = study.seeds, study.stack
    if stack != "auto" and (isinstance(stack, bool) or not isinstance(stack, int) or not 1 <= stack <= 1024):
        fail("stack", f"expected auto or an integer >= 1 (seeds trained together in one trial), got {short(stack)}")
    for key, group, size in (("stack", seeds, stack), ("search_seeds", study.search_seeds, len(study.search_seeds))):
        if size == "auto" or size == 1:
            continue
        runs = [group[i:i + size] for i in range(0, len(group), size)]
        if len(group) % size or any(r != list(range(r[0], r[0] + size)) for r in runs):
            fail(key, f"{size} seeds per trial need the seeds in runs of {size} consecutive integers "
                      f"(e.g. {list(range(size))}), got {short(group)}")
        for d in study.datasets():
            try:
                Config(dataset=d, stack=size)
            except ConfigError as e:
                fail(key, str(e))
    several = max(len(seeds) // (study.stack_for(d)) for d in study.datasets()) > 1
    if not study.confirm and several and study.scheduler is not None:
        fail("scheduler", "ASHA would stop some seeds of a configuration and keep others; stack every seed into "
                          "one trial (stack: auto) or keep the confirmation phase (confirm: true)")
    if not study.confirm and several and study.searcher != "grid":
        fail("seeds", f"the {study.searcher} searcher judges a sampled point on one trial: stack the seeds "
                      f"(stack: auto) or keep the confirmation phase (confirm: true)")
    return study


def smoke(study: Study) -> Study:
    """The same study, shrunk to a few tiny CPU trials through both phases: one cell; a group with
    two configurations to search (then its confirmation), else two arms; one seed; 2 epochs."""
    s = copy.deepcopy(study)

    for k in cell_axes(s):
        kind, values = next(iter(s.search[k].items()))
        s.search[k] = {kind: values[:1]}

    def shrink(space: dict) -> dict:   # two values of the first searched parameter, one of the others
        return {k: {kind: args[:2] if i == 0 else args[:1]} if kind in ("grid", "choice") else {kind: args}
                for i, (k, spec) in enumerate(space.items()) for kind, args in spec.items()}

    s.search = {**{k: v for k, v in s.search.items() if k in cell_axes(s)},
                **shrink({k: v for k, v in s.search.items() if k not in cell_axes(s)})}
    searching = [a for a in s.arms if a.search or any(k not in cell_axes(s) for k in s.search)]
    s.arms = [replace(searching[0], search=shrink(searching[0].search))] if searching else s.arms[:2]
    s.num_samples = min(s.num_samples, 2)
    s.seeds, s.search_seeds, s.stack = s.seeds[:1], s.search_seeds[:1], 1
    s.fixed.update(epochs=2, max_train_examples=256, device="cpu")
    s.by_dataset = {d: {k: v for k, v in values.items() if k not in ("epochs", "max_train_examples", "device")}
                    for d, values in s.by_dataset.items()}
    s.chain_steps = 90
    # ASHA still runs, but with its only rung at the end it never stops a smoke trial
    s.scheduler = {"max_t": 2, "grace_period": 2, "reduction_factor": 2} if s.scheduler else None
    s.resources = {"cpu": 1, "gpu": 0}
    return replace(s, name=f"{s.name}-smoke")


# --- Ray Tune -------------------------------------------------------------------------------------------

def table_columns(study: Study) -> dict[str, str]:
    """The trial parameters that differ between a study's trials, as Tune config keys -> column
    names: what the status table shows."""
    searched = [*study.search, *sorted({k for a in study.arms for k in (*a.search, *a.fixed)} - set(study.search))]
    columns = {k: k for k in searched if k != "method"}
    if len(study.arms) > 1:
        columns = {"arm": "arm", **columns}
    columns["phase"] = "phase"
    if len(study.seeds) > 1:
        columns["seed"] = "seed"
    return columns
