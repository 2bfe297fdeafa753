"""A study's trials, without Ray: its cells, groups and two phases, and what it counts. The runner,
the validator and the Ray hooks (protocol.py) read it; analysis/ reads only the record it leaves
(iabf/record.py), so a cell means the same thing to both.

A *cell* is one entry of a table: by default dataset, channel, code length and test eps; a space's
`cells:` names other parameters (K, flip_budget, ...). A *group* is one arm in one cell: the
alternatives for one table entry. A study runs in two phases, in one Tuner, one MLflow parent run
and one `--resume`:

1. search: each group's configurations (its grid, or `num_samples` draws of its own seeded Optuna
   sampler) train on the search seed (or the mean of a stack of search seeds), and Ray's ASHA,
   one instance per group, stops the weak ones. A trial is only compared with the alternatives
   for its own table entry: never across cells or arms, and a group with one configuration has
   nothing to search;
2. confirm: once a group's search has ended, its best configuration by validation trains on every
   seed in `seeds`, to the full budget, without early stopping (stacked where the dataset allows).
   Tables use these runs only, so every entry has n = len(seeds).

Seeds are repeats, never contestants: the search judges a configuration on its search seed(s);
the confirmation reports it on all of `seeds`, which the search never saw (no winner's curse).
`confirm: false` instead runs every configuration on every seed and tabulates those runs.

What the study writes to MLflow (its tags, the plan `record` below becomes, the cells, the rule that
chooses a configuration) is its record, iabf/record.py, which analysis/ reads too.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

from iabf.config import Config
from iabf.record import DEFAULT_CELL, DEFAULT_CELL_FIELDS, cell_label, cell_of


# --- cells and groups -----------------------------------------------------------------------------

def cell_axes(study) -> dict[str, list]:
    """The searched parameters that make cells: each value is a cell of its own."""
    return {k: next(iter(spec.values())) for k, spec in study.search.items() if is_cell_key(k, study)}


def is_cell(key: str, cells: list | None, fixed: dict) -> bool:
    """Does this parameter decide which cell a trial is in? The study's `cells`, else the paper's
    (DEFAULT_CELL: dataset, channel, bits, test eps; a test eps of -1 means the training eps)."""
    if cells is not None:
        return key in cells
    return key in DEFAULT_CELL_FIELDS.values() or (key == "eps" and fixed.get("test_eps", -1.0) < 0)


def is_cell_key(key: str, study) -> bool:
    return is_cell(key, study.cells, study.fixed)


@dataclass
class Group:
    """One arm in one cell: what the search chooses between, and what the confirmation reports."""
    cell: dict          # cell_of() of its configurations
    arm: str            # the arm's name
    base: dict          # the Config values every configuration of the group shares
    space: dict         # what it searches: {parameter: {distribution: args}}
    dataset: str

    @property
    def key(self) -> str:
        return f"{cell_label(self.cell)} | {self.arm}"

    @property
    def seed(self) -> int:
        """Its samplers' seed: fixed by what the group is, so a study repeats its suggestions."""
        return int(hashlib.sha1(self.key.encode()).hexdigest()[:8], 16)


def groups(study) -> list[Group]:
    axes = cell_axes(study)
    out = []
    for values in itertools.product(*axes.values()):
        for arm in study.arms:
            cell = dict(zip(axes, values))
            base = {**study.fixed_for(cell.get("dataset", study.fixed.get("dataset", Config.dataset))), **cell,
                    **arm.fixed}
            space = {**{k: v for k, v in study.search.items() if k not in axes}, **arm.search}
            cfg = Config.from_dict(base)
            out.append(Group(cell=cell_of(cfg, study.cells), arm=arm.name, base=base, space=space, dataset=cfg.dataset))
    return out


def grid_points(space: dict) -> list[dict] | None:
    """Every configuration of a grid space; None where a distribution is sampled."""
    if any(next(iter(spec)) != "grid" for spec in space.values()):
        return None
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[k]["grid"] for k in names))]


def n_configs(group: Group, study) -> int:
    """How many configurations a group searches, counted, not built."""
    if any(next(iter(spec)) != "grid" for spec in group.space.values()):
        return study.num_samples
    return math.prod(len(spec["grid"]) for spec in group.space.values())


def seed_groups(seeds: list[int], stack: int) -> list[list[int]]:
    return [seeds[i:i + stack] for i in range(0, len(seeds), stack)]


def cell_plan(study) -> list[dict]:
    """Per cell: the trials and trial-epochs the study plans, per phase, and what the full grid
    without early stopping (every configuration on every seed to the end) would cost. Search
    epochs are an upper bound (ASHA stops some trials early); epochs count per seed. `runs` are
    MLflow's: one per trial and seed (a stacked trial trains several seeds)."""
    cells: dict[str, dict] = {}
    for g in groups(study):
        epochs = Config.from_dict(g.base).epochs if "examples_seen" in g.base else g.base.get("epochs", Config().epochs)
        max_t = min(epochs, study.scheduler["max_t"]) if study.scheduler else epochs
        c = cells.setdefault(cell_label(g.cell), {"cell": cell_label(g.cell), "values": g.cell,
                                                  "search_trials": 0, "search_epochs": 0,
                                                  "confirm_trials": 0, "confirm_epochs": 0, "full_grid_epochs": 0,
                                                  "runs": 0})
        n, per_seed_group = n_configs(g, study), len(seed_groups(study.seeds, study.stack_for(g.dataset)))
        c["full_grid_epochs"] += n * len(study.seeds) * epochs
        if not study.confirm:
            c["search_trials"] += n * per_seed_group
            c["search_epochs"] += n * len(study.seeds) * max_t
            c["runs"] += n * len(study.seeds)
        else:
            if n > 1:
                c["search_trials"] += n
                c["search_epochs"] += n * len(study.search_seeds) * max_t
                c["runs"] += n * len(study.search_seeds)
            c["confirm_trials"] += per_seed_group
            c["confirm_epochs"] += len(study.seeds) * epochs
            c["runs"] += len(study.seeds)
    return list(cells.values())


def record(study) -> dict:
    """What the study's parent run keeps as iabf.record.PLAN_ARTIFACT: whether it confirms, its cell axes, per
    cell its values and cell_plan's counts (what the analysis keys its tables on), and the display
    names of its datasets of one's own."""
    return {"confirm": study.confirm, "axes": list(study.cells or DEFAULT_CELL), "cells": cell_plan(study),
            "display": dict(study.display)}


def plan(study) -> dict:
    """The whole study's cell_plan, summed; `trials` is every trial of both phases."""
    keys = ("search_trials", "search_epochs", "confirm_trials", "confirm_epochs", "full_grid_epochs", "runs")
    out = {k: sum(c[k] for c in cell_plan(study)) for k in keys}
    return {**out, "trials": out["search_trials"] + out["confirm_trials"]}
