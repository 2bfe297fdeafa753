"""What a study is: the keys of its YAML file (TOP: defaults, schema, documentation), the Study they
make, and the smoke version of one. Reading and checking a file is studies/validation.py;
`studies/plan.py` says what a Study's trials are (cells, search, confirmation).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace

from analysis.sequential import SPENDING, Design
from iabf import metrics as M
from iabf.config import ARCH_KIND, Config, one_line
from iabf.record import DEFAULT_CELL_TEXT, PHASE
from studies.plan import cell_axes, plan

SEARCHERS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
METRICS = tuple(v for k, v in vars(M).items() if k.isupper() and isinstance(v, str) and v != M.STATE)   # reported


@dataclass(frozen=True)
class Key:
    """One top-level key of a study file, declared once: its default (what `validate` and `Study` use
    when the key is absent), its JSON Schema (studies/schema.py: search_spaces/schema.json) and its row of
    search_spaces/README.md's table (a test keeps the README equal to `python -m studies.schema --markdown`).
    The rules between keys, ranges included, are studies/validation.py's."""
    kind: str                 # the README's "type" column
    default: object           # REQUIRED, or the value an absent key takes
    doc: str                  # the README's "meaning"
    schema: dict              # JSON Schema; #/$defs/... are studies/schema.py's
    shown: str = ""           # the README's "default" column where it is not the value itself
    span: tuple | None = None  # (lo, hi) of an integer key: the validator, schema.json and its command-line option
                               # read it here (`schema` below adds it to the JSON Schema)

    @property
    def full_schema(self) -> dict:
        return {**self.schema, **({"minimum": self.span[0], "maximum": self.span[1]} if self.span else {})}


REQUIRED = object()
DISPLAY = re.compile(r"[\w .,()+/-]{1,60}")   # what a LaTeX and a Markdown table print as they are (_ is escaped)
ARM_NAME = re.compile(r"[\w .=+-]{1,40}")     # an arm's name, as tables print it
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
                  "description": f"the parameters that make a table cell (default: {DEFAULT_CELL_TEXT})"},
                 DEFAULT_CELL_TEXT),
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
    "adaptive": Key("`{batch, max, alpha, permutations, spending}`", None, "seeds decided by the data instead of `seeds`: "
                    "each chosen configuration gets `batch` seeds (0, 1, ...), then each arm still in an undecided "
                    "comparison (an arm against its baselines in its cell, as the report contrasts them) `batch` more, "
                    "up to `max`; AdaStop's group-sequential permutation test keeps the family-wise error at `alpha` "
                    "over every comparison and look (`analysis/sequential.py`), spent over the looks as `spending` says "
                    "(`obrien-fleming`: little early, the last look near a fixed design's power; `linear`: AdaStop's, "
                    "more early stops, less power at the end). Defaults: "
                    + ", ".join(f"{k} {getattr(Design, k)}" for k in ("batch", "max", "alpha", "permutations", "spending")),
                    {"type": "object", "additionalProperties": False,
                     "properties": {"batch": {"type": "integer", "minimum": 2, "maximum": 50},
                                    "max": {"type": "integer", "minimum": 4, "maximum": 200},
                                    "alpha": {"type": "number", "minimum": 0.001, "maximum": 0.5},
                                    "permutations": {"type": "integer", "minimum": 100, "maximum": 100000},
                                    "spending": {"enum": list(SPENDING)}},
                     "description": "the confirmation's seeds decided by the data (AdaStop)"}, "none: `seeds`"),
    "searcher": Key("`grid`, `random`, `optuna`", "grid", "`grid`: every combination of `grid` values; `random` / "
                    "`optuna`: `num_samples` draws per group from Optuna's random or TPE sampler, seeded by the group",
                    {"enum": list(SEARCHERS)}),
    "scheduler": Key("`none` or {name: asha, max_t, grace_period, reduction_factor}", "none", "ASHA early stopping in "
                     "the search, one per group, time in epochs; `max_t` defaults to `epochs`",
                     {"anyOf": [{"const": "none"}, {
                         "type": "object", "additionalProperties": False,
                         "properties": {"name": {"enum": ["asha", "none"]}, "max_t": {"type": "integer", "minimum": 1},
                                        "grace_period": {"type": "integer", "minimum": 1},
                                        "reduction_factor": {"type": "number", "minimum": 2, "maximum": 1000}}}]}),
    "metric": Key("a reported metric", M.VAL_DISTORTION, "what ASHA, Optuna and the choice of a configuration "
                  "optimise", {"enum": list(METRICS)}),
    "mode": Key("`min`/`max`", "min", "whether `metric` is minimised or maximised", {"enum": ["min", "max"]}),
    "num_samples": Key("int >= 1", 1, "draws per group (`random`, `optuna`); a grid runs once",
                       {"type": "integer"}, span=(1, 100_000)),
    "resources": Key("{cpu: >0, gpu: >=0}", {"cpu": 1, "gpu": 0}, "per trial; a GPU fraction packs several trials "
                     "on one GPU",
                     {"type": "object", "additionalProperties": False,
                      "properties": {"cpu": {"type": "number", "exclusiveMinimum": 0},
                                     "gpu": {"type": "number", "minimum": 0}}}),
    "max_concurrent": Key("int >= 0", 0, "at most this many trials at once (0: as many as the resources allow; "
                          "`--max-concurrent` overrides)", {"type": "integer"}, span=(0, 100_000)),
    "chain_steps": Key("int >= 1", 9000, "Markov-chain steps (eq. 32) for each confirmed run's samples "
                       "(`--chain-steps` overrides)", {"type": "integer"}, span=(1, 10**7)),
}
TOP_KEYS = tuple(TOP)


def default(key: str):
    """An absent top-level key's value (a copy: the declaration's lists and mappings are never shared)."""
    return copy.deepcopy(TOP[key].default)


NOT_SEARCHABLE = ("seed", "stack", "data_dir", "device", "download")  # set by `seeds`, `stack`, the command line
SET_BY_SEEDS = ("seed", "stack")   # Config fields a study sets from `seeds` and `stack`: never a value in its file


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
    adaptive: object = None                          # analysis.sequential.Design, or None: every seed of `seeds`
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
        seeds = self.seeds if self.adaptive is None else self.seeds[:self.adaptive.batch]   # a look's batch at most
        consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
        # a dataset of one's own is not stacked by auto (its model is known only from its file)
        stackable = ARCH_KIND.get(dataset) == "mlp" and self.fixed_for(dataset).get("compile", "off") == "off"
        return len(seeds) if consecutive and stackable else 1


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
    columns[PHASE] = PHASE
    if len(study.seeds) > 1:
        columns["seed"] = "seed"
    return columns
