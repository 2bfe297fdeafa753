"""A table's entries, from a frame of runs (analysis.fetch): functions from a DataFrame to a DataFrame, and the
names tables print (`name_datasets` sets the reported study's own datasets' names, a module-level table).

An entry is a cell of the study (its values of the axes the study declared, the `cell.<axis>` columns:
by default dataset, channel, bits and test eps; K, flip_budget or anything else a study's `cells:`
names) and an arm (a row: NECST, ABF, IABF, or a variant). Nothing is ever chosen among cells. With
the protocol's confirmation runs (studies/plan.py) each entry is exactly one configuration, chosen in
the search on other seeds (or the group's only one), run on every seed. Without them (search results,
`confirm: false`), the configuration is the one the study's own rule picks (iabf.record.choose, by its
metric and mode) on the runs reported, and the caption says so. Also here: the names of datasets and
arms as tables show them, and what each cell cost.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pandas as pd

from iabf import metrics as M
from iabf import record as R
from iabf.config import PAPER_METHODS
from iabf.datasets import SPECS


METHODS = PAPER_METHODS   # the paper's, in its Table 1's order


METHOD_NAMES = {"necst": "NECST", "abf": "ABF", "iabf": "IABF", "separation": "Separation"}


DATASET_ORDER = ("binary_mnist", "omniglot", "cifar10", "mnist", "digits")   # the paper's order, then ours


DATASET_NAMES = {k: spec.display for k, spec in SPECS.items()}   # one of one's own: by its name, or name_datasets




NOT_CONFIG = tuple(R.PARAM + k for k in R.NOT_CONFIG)   # a frame's columns of what is not a configuration


def name_datasets(names: dict[str, str]) -> None:
    """The display names of the study being reported (its `display`, kept in its plan) for its
    datasets of one's own, replacing any earlier study's; the paper's datasets keep theirs."""
    for d in [d for d in DATASET_NAMES if d not in SPECS]:
        del DATASET_NAMES[d]
    DATASET_NAMES.update({d: n for d, n in names.items() if d not in SPECS})


def chosen_by(metric: str = M.VAL_DISTORTION, mode: str = "min") -> str:
    """How a study chose its configurations, as captions and messages say it: by its own metric and mode."""
    if (metric, mode) in ((M.VAL_DISTORTION, "min"), (M.BEST_VAL_DISTORTION, "min")):
        return "validation distortion"
    return f"{metric} ({'lowest' if mode == 'min' else 'highest'})"


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def config_text(row: pd.Series, columns) -> str:
    """The parameters of a configuration that differ between the study's configurations: lam=0.01 K=5."""
    parts = []
    for c in columns:
        v = row[c]
        if isinstance(v, float) and math.isnan(v):
            continue
        parts.append(f"{c.removeprefix(R.PARAM)}={R.value_text(v)}")
    return " ".join(parts)


def with_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """trials with its cell columns and arms: a frame from analysis.fetch has them; one without
    (built by hand) is keyed on (dataset, bits, eps), and on channel where it has one."""
    if "arm" not in trials:
        trials = trials.assign(arm=trials.method)
    if any(c.startswith(R.CELL_PREFIX) for c in trials.columns):
        return trials
    axes = [a for a in R.DEFAULT_CELL if a in trials]
    return trials.assign(**{R.CELL_PREFIX + a: trials[a] for a in axes})


def cell_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(R.CELL_PREFIX)]


def entry_columns(frame: pd.DataFrame) -> list[str]:
    return [*cell_columns(frame), "arm"]


def axis_name(column: str) -> str:
    return column.removeprefix(R.CELL_PREFIX)


def select_cells(trials: pd.DataFrame, alpha: float = 0.05, context: pd.DataFrame | None = None,
                 metric: str = M.VAL_DISTORTION, mode: str = "min") -> pd.DataFrame:
    """One row per table entry (cell and arm): its configuration, its test mean, std, n, per-seed
    values; `best` (lowest test mean among the arms of its cell) and `tied` (not significantly
    different from the best: Welch's t-test, p >= alpha; needs 2+ seeds on both sides). An entry
    of confirmation runs is one configuration; an entry of search results with several is given
    the one the study's own rule chooses (iabf.record.choose on its `metric` and `mode`, the mean
    over seeds). `config`: the chosen values of the parameters that vary between the runs of its
    entry in `context` (default: `trials`; the study's search runs show what was searched)."""
    empty = ["cell", "dataset", "bits", "method", "eps", "arm", R.CONFIG_HASH, "config", "lam", "K", "val", "test",
             "std", "n", "tests", "run_ids", "best", "tied", "p_value"]
    if trials.empty:
        return pd.DataFrame(columns=[*cell_columns(trials), *empty])
    trials = with_cells(trials)
    context = with_cells(trials if context is None else context)
    entry, axes = entry_columns(trials), cell_columns(trials)
    params = [c for c in trials.columns if c.startswith(R.PARAM) and c not in NOT_CONFIG]
    # per entry, the parameters its own runs vary: what its search chose between
    varying = {key: [c for c in params if c in group and group[c].astype(str).nunique() > 1]
               for key, group in context.groupby(entry, dropna=False)}
    first = {c: (c, "first") for c in ("dataset", "bits", "method", "eps", "cell", *params) if c in trials}
    trials = trials.assign(score=trials[score_column(trials, metric)],
                           epochs=trials["epochs"] if "epochs" in trials else 0)
    configs = (trials.groupby([*entry, R.CONFIG_HASH], dropna=False)
               .agg(lam=("lam", "first"), K=("K", "first"), val=("val", "mean"), test=("test", "mean"),
                    score=("score", "mean"), epochs=("epochs", "max"),
                    std=("test", "std"), n=("test", "size"), tests=("test", list), run_ids=("run_id", list),
                    **({"seeds": ("seed", list)} if "seed" in trials else {}),
                    **{c: spec for c, spec in first.items() if c not in entry})
               .reset_index())
    configs["config"] = [config_text(r, varying.get(tuple(r[k] for k in entry), [])) or "(none searched)"
                         for _, r in configs.iterrows()]
    if R.PHASE in trials and (trials[R.PHASE] == R.CONFIRM).all():
        several = configs.groupby(entry, dropna=False).size()
        for key in several[several > 1].index:
            warnings.warn(f"entry {key} has {several[key]} configurations among its confirmation runs: the study's "
                          "cells do not tell them apart; the one best by validation is shown", stacklevel=2)
    chosen = []
    for _, group in configs.groupby(entry, dropna=False, sort=False):
        pick = R.choose([{"uid": i, "epoch": r.epochs, "score": r.score} for i, r in group.iterrows()], mode)
        chosen.append(pick["uid"] if pick else group.index[0])
    from analysis.significance import welch_samples   # the one Welch test (significance imports this module)

    cells = configs.loc[chosen].copy()
    cells["best"], cells["tied"], cells["p_value"] = False, False, float("nan")
    for _, col in cells.groupby(axes, dropna=False):
        best = col["test"].idxmin()
        cells.loc[best, "best"] = True
        for i in col.index.drop(best):
            a, b = cells.at[i, "tests"], cells.at[best, "tests"]
            if len(a) >= 2 and len(b) >= 2:
                p = welch_samples(a, b)[2]
                cells.at[i, "p_value"] = p
                cells.at[i, "tied"] = bool(p >= alpha) if math.isfinite(p) else True
    order = {m: i for i, m in enumerate(METHODS)}
    return cells.sort_values([*axes, "method", "arm"],
                             key=lambda c: c.map(order) if c.name == "method" else c).reset_index(drop=True)


def score_column(trials: pd.DataFrame, metric: str) -> str:
    """The column of each run's score for the study's metric (iabf.record.score_key): analysis.fetch's
    metric.<key>, or `val` (the best validation distortion) in a frame that has no metric columns."""
    key = R.score_key(metric)
    if R.METRIC_OF + key in trials:
        return R.METRIC_OF + key
    if key == M.BEST_VAL_DISTORTION and "val" in trials:
        return "val"
    raise TableError(f"the runs have no {key!r} metric, which chooses the study's configurations (metric: {metric})")


class TableError(ValueError):
    """A table given to compare with that is not one analysis.report wrote."""


def arm_label(arm: str) -> str:
    """NECST, ABF, IABF for the paper's rows; an arm's own name otherwise, its method in capitals
    ("iabf topk" -> "IABF topk")."""
    method, _, rest = arm.partition(" ")
    label = " ".join([METHOD_NAMES.get(method, method), rest]).strip()
    # the capacity bound is no scheme (separation.py): every table and figure says so
    return label + " (optimistic)" if "bound" in rest.split() else label


def arms(cells: pd.DataFrame, planned: list[str] | None = None) -> list[str]:
    """The table's rows: the paper's methods first, in its order (NECST, ABF, IABF), then variants.
    `planned`: the arms the study ran (its parent run's `arms`), so that an arm with no result yet
    still has a row; default the arms present (an older study without it: the paper's three)."""
    if planned is None and (cells.empty or set(cells.arm) <= set(METHODS)):
        return list(METHODS)
    order = {m: i for i, m in enumerate(METHODS)}
    pairs = {*cells[["method", "arm"]].drop_duplicates().itertuples(index=False, name=None),
             *((a.partition(" ")[0], a) for a in planned or [])}
    return [a for _, a in sorted(pairs, key=lambda p: (order.get(p[0], 99), p[1] != p[0], p[1]))]


def cost(trials: pd.DataFrame, plan: dict | None = None) -> pd.DataFrame:
    """What each cell cost, over all its runs (early-stopped and failed ones included): trial-epochs
    (one per seed and epoch) spent in the search and in the confirmation, beside what the full grid
    without early stopping would have cost (from the study's plan, when it logged one)."""
    df = trials.assign(gpu_hours=trials.get(R.METRIC_OF + M.GPU_SECONDS, 0.0) / 3600,
                       trial_hours=trials.get(R.METRIC_OF + M.WALL_SECONDS, 0.0) / 3600,
                       search_epochs=trials.epochs.where(trials[R.PHASE] != R.CONFIRM, 0.0),
                       confirm_epochs=trials.epochs.where(trials[R.PHASE] == R.CONFIRM, 0.0)).fillna(
        {"gpu_hours": 0.0, "trial_hours": 0.0})
    out = (df.groupby(R.CELL).agg(runs=("run_id", "size"), search_epochs=("search_epochs", "sum"),
                                  confirm_epochs=("confirm_epochs", "sum"), trial_hours=("trial_hours", "sum"),
                                  gpu_hours=("gpu_hours", "sum")).reset_index())
    planned = {c["cell"]: c["full_grid_epochs"] for c in (plan or {}).get("cells", [])}
    out["full_grid_epochs"] = out.cell.map(planned).astype(float)
    out["of_full_grid"] = (out.search_epochs + out.confirm_epochs) / out.full_grid_epochs
    return out


# --- from the store to the entries: one pipeline, for analysis.report and analysis.best ---------------------

class NothingToReport(LookupError):
    """A study with nothing a table could show (no completed trial)."""


@dataclass
class Runs:
    """What a report is built from: the study's runs as analysis.fetch reads them, and its record."""
    everything: pd.DataFrame   # every run, unfinished ones included
    completed: pd.DataFrame    # the completed ones
    trials: pd.DataFrame       # what the table reports: the confirmation runs, where the study has them
    confirmed: bool            # the table is of confirmation runs
    provisional: bool          # the study confirms, but its confirmation phase has not run
    params: dict               # the parent run's parameters
    plan: dict | None          # the parent run's plan (iabf.record.PLAN_ARTIFACT)


def gather(uri: str, study: str, parent: str | None) -> Runs:
    """The study's runs and record; warns when its table can only be provisional."""
    from analysis.fetch import fetch_runs, recorded_params, study_plan, table_runs   # MLflow: only when asked

    everything = fetch_runs(uri, study, parent, include_unfinished=True)
    completed = everything[everything[R.STOP_REASON] == R.COMPLETED].reset_index(drop=True)
    if completed.empty:
        raise NothingToReport(f"study {study!r} has no completed trial yet: nothing to tabulate")
    trials, confirmed = table_runs(completed)   # confirmation runs only, where the study has them
    params, plan = recorded_params(uri, study, parent), study_plan(uri, study, parent)
    name_datasets((plan or {}).get("display", {}))
    # a study whose confirmation phase has not run yet (interrupted): its search results, marked so
    provisional = not confirmed and bool(plan.get("confirm", True) if plan else params.get(R.CONFIRMING) == "True")
    if provisional:
        warnings.warn(f"study {study!r}: its confirmation phase has not run; this table is provisional (search "
                      "results on the search seeds); finish the study with `python studies/ablation.py --space "
                      "<its file> --resume`", stacklevel=3)
    return Runs(everything, completed, trials.reset_index(drop=True), confirmed, provisional, params, plan)


def chosen(runs: Runs) -> pd.DataFrame:
    """The table's entries: chosen as the study chose (its metric and mode), among all that each group
    searched (every run, unfinished ones included, for what a group tried)."""
    from analysis.fetch import chooser

    return select_cells(runs.trials, context=runs.everything, **chooser(runs.params))
