"""Tables from a trials DataFrame (analysis.fetch): pure functions, DataFrame in, text out.

An entry of every table is a cell of the study (its values of the axes the study declared, the
`cell.<axis>` columns: by default dataset, channel, bits and test eps; K, flip_budget or anything
else a study's `cells:` names) and an arm (a row: NECST, ABF, IABF, or a variant). Nothing is ever
chosen among cells. With the protocol's confirmation runs (studies/plan.py) each entry is exactly
one configuration, chosen in the search on other seeds (or the group's only one), run on every
seed. Without them (search results, `confirm: false`), the configuration with the lowest mean
*validation* distortion of its entry is chosen on the runs reported, and the caption says so.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from iabf import metrics as M
from iabf import record as R
from iabf.datasets import SPECS

METHODS = ("necst", "abf", "iabf")
METHOD_NAMES = {"necst": "NECST", "abf": "ABF", "iabf": "IABF", "separation": "Separation"}
DATASET_ORDER = ("binary_mnist", "omniglot", "cifar10", "mnist", "digits")   # the paper's order, then ours
DATASET_NAMES = {k: spec.display for k, spec in SPECS.items()}   # one of one's own: by its name, or name_datasets
PAPER_TABLE1 = Path(__file__).with_name("paper_table1.csv")
CELL = ["dataset", "bits", "method", "eps"]      # the paper's entries, which the reproduction compares
LEGACY_AXES = ("dataset", "bits", "eps")         # the cell of a frame without cell columns (older callers)
NOT_CONFIG = tuple(f"param.{k}" for k in R.NOT_CONFIG)   # a frame's columns of what is not a configuration


def name_datasets(names: dict[str, str]) -> None:
    """The display names of the study being reported (its `display`, kept in its plan) for its
    datasets of one's own, replacing any earlier study's; the paper's datasets keep theirs."""
    for d in [d for d in DATASET_NAMES if d not in SPECS]:
        del DATASET_NAMES[d]
    DATASET_NAMES.update({d: n for d, n in names.items() if d not in SPECS})


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def config_text(row: pd.Series, columns) -> str:
    """The parameters of a configuration that differ between the study's configurations: lam=0.01 K=5."""
    parts = []
    for c in columns:
        v = row[c]
        if isinstance(v, float) and math.isnan(v):
            continue
        parts.append(f"{c.removeprefix('param.')}={R.value_text(v)}")
    return " ".join(parts)


def with_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """trials with its cell columns and arms: a frame from analysis.fetch has them; one without
    (built by hand) is keyed on (dataset, bits, eps), and on channel where it has one."""
    if "arm" not in trials:
        trials = trials.assign(arm=trials.method)
    if any(c.startswith(R.CELL_PREFIX) for c in trials.columns):
        return trials
    axes = [a for a in ("dataset", "channel", "bits", "eps") if a in trials]
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
    empty = ["cell", "dataset", "bits", "method", "eps", "arm", "config_hash", "config", "lam", "K", "val", "test",
             "std", "n", "tests", "run_ids", "best", "tied", "p_value"]
    if trials.empty:
        return pd.DataFrame(columns=[*cell_columns(trials), *empty])
    trials = with_cells(trials)
    context = with_cells(trials if context is None else context)
    entry, axes = entry_columns(trials), cell_columns(trials)
    params = [c for c in trials.columns if c.startswith("param.") and c not in NOT_CONFIG]
    # per entry, the parameters its own runs vary: what its search chose between
    varying = {key: [c for c in params if c in group and group[c].astype(str).nunique() > 1]
               for key, group in context.groupby(entry, dropna=False)}
    first = {c: (c, "first") for c in ("dataset", "bits", "method", "eps", "cell", *params) if c in trials}
    trials = trials.assign(score=trials[score_column(trials, metric)],
                           epochs=trials["epochs"] if "epochs" in trials else 0)
    configs = (trials.groupby([*entry, "config_hash"], dropna=False)
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
    cells = configs.loc[chosen].copy()
    cells["best"], cells["tied"], cells["p_value"] = False, False, float("nan")
    for _, col in cells.groupby(axes, dropna=False):
        best = col["test"].idxmin()
        cells.loc[best, "best"] = True
        for i in col.index.drop(best):
            a, b = cells.at[i, "tests"], cells.at[best, "tests"]
            if len(a) >= 2 and len(b) >= 2:
                p = stats.ttest_ind(a, b, equal_var=False).pvalue
                cells.at[i, "p_value"] = p
                cells.at[i, "tied"] = bool(p >= alpha) if math.isfinite(p) else True
    order = {m: i for i, m in enumerate(METHODS)}
    return cells.sort_values([*axes, "method", "arm"],
                             key=lambda c: c.map(order) if c.name == "method" else c).reset_index(drop=True)


def score_column(trials: pd.DataFrame, metric: str) -> str:
    """The column of each run's score for the study's metric (iabf.record.score_key): analysis.fetch's
    metric.<key>, or `val` (the best validation distortion) in a frame that has no metric columns."""
    key = R.score_key(metric)
    if f"metric.{key}" in trials:
        return f"metric.{key}"
    if key == M.BEST_VAL_DISTORTION and "val" in trials:
        return "val"
    raise TableError(f"the runs have no {key!r} metric, which chooses the study's configurations (metric: {metric})")


def welch_samples(a: list, b: list, level: float = 0.95) -> tuple[float, float, float]:
    """Welch's t-test of mean(a) - mean(b) over seeds: (low, high, p) of its `level` interval; NaN
    where either side has fewer than 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan"), float("nan")
    t = stats.ttest_ind(a, b, equal_var=False)
    low, high = t.confidence_interval(level)
    return float(low), float(high), float(t.pvalue)


def p_text(p: float, alpha: float = 0.05) -> str:
    """A p-value as the contrast tables print it: `*` where p < alpha, `--` where there is none."""
    return "--" if math.isnan(p) else f"{p:.3g}" + (" *" if p < alpha else "")


def contrasts(cells: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Each arm against the baselines of its column: NECST by the paper's equations, its own
    method by the paper's equations (an arm "iabf topk" against "iabf"), and the methods before it
    in the same version where the study has them ("iabf" against "abf" and "iabf topk" against
    "abf topk": what the infomax term adds to the same adversary; "iabf reference" against
    "necst reference").
    diff = arm - baseline in test distortion (negative: the arm is better), with Welch's t-test
    p-value and its `level` confidence interval of the difference (NaN where either side has fewer
    than 2 seeds), and p_holm, the p-value adjusted for every contrast returned."""
    cells = with_cells(cells)
    axes = cell_columns(cells)
    cols = [*axes, "dataset", "bits", "eps", "arm", "against", "diff", "low", "high", "p_value", "n", "n_against",
            "rel_diff"]
    rows = []
    for key, col in cells.groupby(axes, dropna=False):   # arms within one cell only
        key = key if isinstance(key, tuple) else (key,)
        dataset, bits, eps = col.dataset.iloc[0], col.bits.iloc[0], col.eps.iloc[0]
        by_arm = {r.arm: r for r in col.itertuples()}
        for r in col.itertuples():
            v = r.arm.removeprefix(r.method).strip()
            earlier = METHODS[:METHODS.index(r.method)] if r.method in METHODS else ()
            for base in dict.fromkeys(("necst", r.method, *(f"{m} {v}".strip() for m in earlier))):
                if base == r.arm or base not in by_arm:
                    continue
                a, b = list(r.tests), list(by_arm[base].tests)
                low, high, p = welch_samples(a, b, level)
                rows.append((*key, dataset, bits, eps, r.arm, base, r.test - by_arm[base].test, low, high, p, len(a),
                             len(b), r.test / by_arm[base].test - 1))
    out = pd.DataFrame(rows, columns=cols)
    out["p_holm"] = holm(out.p_value)
    return out


AXIS_NOT_CONTRASTED = ("dataset", "bits", "eps", "test_eps", "channel")   # Table 1's own axes: its columns and blocks


def contrasted_axes(cells: pd.DataFrame) -> list[str]:
    """The cell axes an ablation varies beyond Table 1's (precision, K, a flip budget, a likelihood):
    each gets axis_contrasts."""
    cells = with_cells(cells)
    return [c for c in cell_columns(cells) if axis_name(c) not in AXIS_NOT_CONTRASTED and cells[c].nunique() > 1]


def axis_contrasts(cells: pd.DataFrame, column: str, level: float = 0.95) -> pd.DataFrame:
    """Each arm at each value of a cell axis against the same arm at the axis's baseline value, with
    every other cell axis equal: what changing that one setting does (bf16 against fp32). The baseline
    is the Config default where the axis has it (a flip budget's: the cell's eps), else its smallest
    value. diff = value - baseline in
    test distortion (negative: better), Welch's t-test over seeds and its `level` interval, p_holm
    over every contrast returned.
    An arm whose entries at a value and at the baseline are the same numbers, seed for seed, does not
    use the axis (NECST has no adversary for a flip budget to limit): no contrast, the arm is listed
    in attrs["inert"]. A contrast that recurs unchanged in several blocks (NECST across K at every
    flip budget) is one row, its other axis joined ("0.05, 0.1, 0.2"): Holm counts it once."""
    from iabf.config import Config

    cells = with_cells(cells)
    axis, others = axis_name(column), [c for c in cell_columns(cells) if c != column]
    values = sorted(cells[column].dropna().unique(), key=R.value_text)
    default = getattr(Config(), axis, None)
    fallback = default if default in values else min(values, key=lambda v: (isinstance(v, str), v))
    rows, seen, inert = [], {}, set()
    for key, group in cells.groupby([*others, "arm"], dropna=False) if others else cells.groupby(["arm"]):
        key = key if isinstance(key, tuple) else (key,)
        at = {r[column]: r for _, r in group.iterrows()}
        # the flip budget's default (-1) is the paper's, eps: Config resolves it (adv_eps)
        resolved = Config(eps=float(group.eps.iloc[0])).adv_eps if axis == "flip_budget" else default
        base = resolved if resolved in at else fallback
        if base not in at:
            continue
        b = at[base]
        for v, r in at.items():
            if v == base:
                continue
            x, y = list(r.tests), list(b.tests)
            if "seeds" in r and per_seed(r) == per_seed(b):
                inert.add(r.arm)
                continue
            again = (r.arm, R.value_text(v), per_seed(r), per_seed(b))
            if again in seen:   # the other axes that differ: joined in the first row
                first = rows[seen[again]]
                for i, c in enumerate(others):
                    if R.value_text(key[i]) not in str(first[i]).split(", "):
                        first[i] = f"{R.value_text(first[i])}, {R.value_text(key[i])}"
                continue
            seen[again] = len(rows)
            low, high, p = welch_samples(x, y, level)
            rows.append([*key, r.dataset, R.value_text(v), R.value_text(base), r.test, b.test, r.test - b.test, low, high,
                         p, len(x), len(y), r.test / b.test - 1])
    out = pd.DataFrame(rows, columns=[*others, "arm", "dataset", axis, "baseline", "test", "test_baseline", "diff",
                                      "low", "high", "p_value", "n", "n_baseline", "rel_diff"])
    out["p_holm"] = holm(out.p_value)
    out.attrs["inert"] = sorted(inert - set(out.arm))
    return out


def per_seed(entry) -> tuple:
    """An entry's test values matched to its seeds (in run order where the seeds are not known)."""
    return tuple(sorted(zip(entry.seeds, entry.tests))) if "seeds" in entry else tuple(entry.tests)


def inert_text(con: pd.DataFrame, axis: str) -> str:
    """The sentence for axis_contrasts' arms that do not use the axis, or ""."""
    inert = con.attrs.get("inert", [])
    return (f" {', '.join(map(arm_label, inert))}: the same numbers, seed for seed, at every {axis} (the arm does not "
            f"use it): no contrast." if inert else "")


def axis_contrasts_markdown(con: pd.DataFrame, axis: str, alpha: float = 0.05) -> str:
    others = [c for c in cell_columns(con) if con[c].nunique() > 1]
    lines = ["| " + " | ".join(map(axis_name, others)) + (" | " if others else "") +
             f"arm | {axis} | against | test | baseline | diff (95% CI) | relative | p (Welch) | p (Holm) | n |",
             "|---" * (len(others) + 10) + "|"]
    for _, c in con.iterrows():
        ci = "" if math.isnan(c.low) else f" ({c.low:+.4g}, {c.high:+.4g})"
        lines.append("| " + " | ".join(dataset_name(c[a]) if axis_name(a) == "dataset" else R.value_text(c[a])
                                       for a in others) + (" | " if others else "") +
                     f"{arm_label(c.arm)} | {c[axis]} | {c.baseline} | {c.test:.4g} | {c.test_baseline:.4g} | "
                     f"{c['diff']:+.4g}{ci} | {c.rel_diff:+.2%} | {p_text(c.p_value, alpha)} | {p_text(c.p_holm, alpha)} | "
                     f"{c.n} vs {c.n_baseline} |")
    return "\n".join(lines) + "\n"


def tally(con: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per arm and baseline, across the table's cells: in how many the arm is significantly better
    (diff < 0, Holm-adjusted p < alpha), significantly worse, or neither, and which cells; also in
    how many its mean is lower at all (`lower`, significant or not) and the uncorrected p < alpha
    counts (`better_raw`, `worse_raw`), for the direction of the evidence where Holm finds none."""
    axes = cell_columns(con)
    shown = [c for c in axes if con[c].nunique() > 1 and axis_name(c) not in ("dataset", "bits", "eps")]

    def where(rows) -> str:   # Table 1's cells as "Omniglot 0.3"; other axes as axis=value
        return ", ".join(" ".join([dataset_name(r["dataset"]), f"{r['eps']:g}",
                                   *(f"{axis_name(c)}={R.value_text(r[c])}" for c in shown)])
                         for _, r in rows.iterrows()) or "--"

    out = []
    for (arm, against), g in con.groupby(["arm", "against"], sort=False):
        sig = g.p_holm < alpha
        better, worse = g[sig & (g["diff"] < 0)], g[sig & (g["diff"] > 0)]
        raw = g.p_value < alpha
        out.append({"arm": arm, "against": against, "cells": len(g), "better": len(better), "worse": len(worse),
                    "neither": len(g) - len(better) - len(worse), "lower": int((g["diff"] < 0).sum()),
                    "better_raw": int((raw & (g["diff"] < 0)).sum()), "worse_raw": int((raw & (g["diff"] > 0)).sum()),
                    "mean_rel_diff": g["rel_diff"].mean(), "better_in": where(better), "worse_in": where(worse)})
    return pd.DataFrame(out, columns=["arm", "against", "cells", "better", "worse", "neither", "lower", "better_raw",
                                      "worse_raw", "mean_rel_diff", "better_in", "worse_in"])


def tally_markdown(t: pd.DataFrame) -> str:
    lines = ["| arm | against | cells | better (Holm) | worse (Holm) | neither | lower mean | better / worse (p < 0.05, "
             "uncorrected) | mean relative diff | better in | worse in |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {arm_label(r.arm)} | {arm_label(r.against)} | {r.cells} | {r.better} | {r.worse} | {r.neither} | "
              f"{r.lower} | {r.better_raw} / {r.worse_raw} | {r.mean_rel_diff:+.1%} | {r.better_in} | {r.worse_in} |"
              for r in t.itertuples()]
    return "\n".join(lines) + "\n"


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjustment over every p-value given (NaN left out): a study makes many
    contrasts, and p < 0.05 in one of 26 is expected by chance."""
    valid = p.dropna().sort_values()
    m = len(valid)
    adjusted = (valid * (m - pd.Series(range(m), index=valid.index))).cummax().clip(upper=1.0)
    return adjusted.reindex(p.index)


# --- against another study's committed table (its table1.csv): summary statistics, per cell ------------------

ENTRY = ["dataset", "bits", "eps", "arm", "method", "test", "std", "n"]


class TableError(ValueError):
    """A table given to compare with that is not one analysis.report wrote."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Another study's table1.csv (analysis.report's), its entries with what a summary contrast needs."""
    path = Path(path)
    try:
        other = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise TableError(f"--against {path}: not a readable table ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    missing = [c for c in ENTRY if c not in other]
    if missing:
        raise TableError(f"--against {path}: not a table1.csv of analysis.report: no column(s) {', '.join(missing)}")
    return other


def welch(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int, level: float = 0.95):
    """Welch's t-test and the `level` confidence interval of m1 - m2 from means, sample stds and sizes
    (the same numbers as from the samples): (low, high, p); NaN where a side has fewer than 2."""
    if n1 < 2 or n2 < 2 or not all(map(math.isfinite, (s1, s2))):
        return float("nan"), float("nan"), float("nan")
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    se = math.sqrt(v1 + v2)
    if se == 0:
        return m1 - m2, m1 - m2, 1.0 if m1 == m2 else 0.0
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    p = 2 * stats.t.sf(abs(m1 - m2) / se, df)
    return m1 - m2 - half, m1 - m2 + half, float(p)


def against(cells: pd.DataFrame, other: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Each of the other table's arms against each of this study's, in the cells both have (dataset,
    code length, eps): diff = other - this (negative: the other table's arm is better), Welch's 95% CI
    and p from the summary statistics, p_holm over every contrast returned."""
    ours = cells[ENTRY]
    rows = []
    for (dataset, bits, eps), mine in ours.groupby(["dataset", "bits", "eps"]):
        theirs = other[(other.dataset == dataset) & (other.bits == bits) & np.isclose(other.eps, eps)]
        for o in theirs.itertuples():
            for m in mine.itertuples():
                low, high, p = welch(o.test, o.std, int(o.n), m.test, m.std, int(m.n), level)
                rows.append((dataset, bits, eps, o.arm, m.arm, o.test - m.test, low, high, p, int(o.n), int(m.n),
                             o.test / m.test - 1))
    out = pd.DataFrame(rows, columns=["dataset", "bits", "eps", "arm", "against", "diff", "low", "high", "p_value",
                                      "n", "n_against", "rel_diff"])
    out["p_holm"] = holm(out.p_value)
    return out


def contrasts_markdown(con: pd.DataFrame, alpha: float = 0.05) -> str:
    """The contrasts as a markdown table; `*`: p < alpha, before and after Holm's adjustment."""
    axes = cell_columns(con) or ["dataset", "bits", "eps"]
    lines = ["| " + " | ".join(map(axis_name, axes)) + " | arm | against | diff (95% CI) | p (Welch) | p (Holm) | n |",
             "|---" * (len(axes) + 6) + "|"]
    for _, c in con.iterrows():
        ci = "" if math.isnan(c.low) else f" ({c.low:+.3f}, {c.high:+.3f})"
        lines.append("| " + " | ".join(R.value_text(c[a]) for a in axes) + f" | {arm_label(c.arm)} | "
                     f"{arm_label(c.against)} | {c['diff']:+.3f}{ci} | {p_text(c.p_value, alpha)} | {p_text(c.p_holm, alpha)} | "
                     f"{c.n} vs {c.n_against} |")
    return "\n".join(lines) + "\n"


def layout(cells: pd.DataFrame) -> tuple[list[str], str | None]:
    """How a study's cells are laid out: (block axes, column axis). Table 1's layout for a study
    shaped like it (a block per dataset and code length, a column per eps); for an ablation, the
    column is eps where the study has it, else its last axis that varies (numeric first), and every
    other axis makes blocks (a block per dataset and K, columns flip_budget). Within a block, each
    column is one cell, so a column's entries are the arms of one cell: comparable."""
    axes = cell_columns(cells)
    varying = [c for c in axes if cells[c].nunique() > 1]
    numeric = [c for c in varying if pd.api.types.is_numeric_dtype(cells[c])]
    noise = [c for c in (R.CELL_PREFIX + "eps", R.CELL_PREFIX + "test_eps") if c in axes]
    column = next((c for c in noise if c in varying), None) or (numeric or varying or noise or [None])[-1]
    return [c for c in axes if c != column], column


def arm_grids(cells: pd.DataFrame) -> str:
    """For a study with two or more cell axes that vary: per arm (and per value of any further
    varying axis), a grid of test distortion, the last two varying axes as rows and columns
    (K x flip budget): how one arm moves across the ablation. Markdown; "" for other studies."""
    cells = with_cells(cells)
    varying = [c for c in cell_columns(cells) if cells[c].nunique() > 1]
    if len(varying) < 2:
        return ""
    rows_axis, cols_axis, rest = varying[-2], varying[-1], varying[:-2]
    out = []
    for arm in [a for a in arms(cells) if a in set(cells.arm)]:   # a grid per arm that has entries
        for key, g in (cells[cells.arm == arm].groupby(rest) if rest else [((), cells[cells.arm == arm])]):
            key = key if isinstance(key, tuple) else (key,)
            cols = sorted(g[cols_axis].unique())
            title = ", ".join([arm_label(arm), *(f"{axis_name(c)}={R.value_text(v)}" for c, v in zip(rest, key))])
            out += [f"| {title}: {axis_name(rows_axis)} \\ {axis_name(cols_axis)} | "
                    + " | ".join(R.value_text(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
            for r in sorted(g[rows_axis].unique()):
                line = []
                for c in cols:
                    hit = g[(g[rows_axis] == r) & (g[cols_axis] == c)]
                    line.append(_number(hit.iloc[0], " ± ") if len(hit) else "--")
                out.append(f"| {R.value_text(r)} | " + " | ".join(line) + " |")
            out.append("")
    return "\n".join(out)


def _blocks(cells: pd.DataFrame):
    """The blocks (one dict of block-axis values each) in the paper's dataset order, the column
    axis and its values."""
    block_axes, column = layout(cells)
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    combos = cells[block_axes].drop_duplicates().to_dict("records") if block_axes else [{}]
    combos.sort(key=lambda b: (order.get(b.get(R.CELL_PREFIX + "dataset"), 99),
                               *(str(v) if not isinstance(v, (int, float)) else f"{v:020.6f}" for v in b.values())))
    return combos, column, (sorted(cells[column].unique()) if column else [None])


def block_name(block: dict, cells: pd.DataFrame) -> str:
    """A block's heading: the dataset's name, then the values of the other block axes that vary
    (or, for the channel, that are not the paper's BSC); the code length is in the row labels."""
    name = dataset_name(block.get(R.CELL_PREFIX + "dataset", ""))
    extra = shown(block, cells)
    return ", ".join([name, *extra]) if name else ", ".join(extra) or "all"


def shown(block: dict, cells: pd.DataFrame) -> list[str]:
    """axis=value for the block axes a reader needs told: those that vary, and a channel that is
    not the paper's BSC (dataset and code length have their own places)."""
    return [f"{axis_name(c)}={R.value_text(v)}" for c, v in block.items()
            if axis_name(c) not in ("dataset", "bits") and (cells[c].nunique() > 1 or (axis_name(c) == "channel"
                                                                                      and v != "bsc"))]


def setting(name: str, value, latex: bool, sep: str = "=") -> str:
    """`name=value` for a heading or a caption; the noise as the paper's epsilon in LaTeX (the test
    channel's said as such: a column of test noise is not one of training noise)."""
    test = "test " if name == "test_eps" else ""
    if name in ("eps", "test_eps"):
        return f"{test}$\\epsilon{sep}{R.value_text(value)}$" if latex else f"{test}eps{sep}{R.value_text(value)}"
    return f"{name}{sep}{R.value_text(value)}".replace("_", "\\_" if latex else "_")


def column_heading(column: str | None, value, latex: bool) -> str:
    if column is None:
        return "test distortion"
    name = axis_name(column)
    return setting(name, value, latex, " " if name in ("eps", "test_eps") and not latex else "=")   # "eps 0.1", "K=2"


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


def _grid(cells: pd.DataFrame, fmt, planned: list[str] | None = None):
    """Rows of (label, [entries]) per block, and the column axis and values; an entry the study
    planned and did not get is warned about and shown as '--' (planned: the study's arms; see `arms`)."""
    cells = with_cells(cells)
    blocks, column, values = _blocks(cells)
    rows_of = arms(cells, planned)
    out = []
    for block in blocks:
        in_block = cells.loc[(cells[list(block)] == pd.Series(block)).all(axis=1)] if block else cells
        bits = int(in_block.bits.iloc[0]) if len(in_block) else block.get(R.CELL_PREFIX + "bits", "")
        rows = []
        for arm in rows_of:
            entries = []
            for v in values:
                hit = in_block[(in_block.arm == arm) & ((in_block[column] == v) if column else True)]
                if hit.empty:
                    where = " ".join([str(block.get(R.CELL_PREFIX + "dataset", "")), f"{bits}-bit", arm,
                                      *shown(block, cells), *([f"{axis_name(column)} {R.value_text(v)}"] if column else [])])
                    # one location and message: Python shows it once, however many formats are written
                    warnings.warn(f"missing cell: {' '.join(where.split())}")
                    entries.append("--")
                else:
                    entries.append(fmt(hit.iloc[0]))
            rows.append((f"{bits}-bit {arm_label(arm)}", entries))
        out.append((block_name(block, cells), rows))
    return out, column, values


def _number(row, pm: str) -> str:
    text = f"{row.test:.3f}"
    if row.n > 1 and math.isfinite(row["std"]):
        text += f"{pm}{row['std']:.3f}"
    return text


def held(cells: pd.DataFrame, latex: bool = True) -> str:
    """The noise level and any other cell value a reader of the table alone is not told, as a
    sentence for the caption: an axis with one value that no heading shows (an ablation of K and the
    flip budget at eps 0.1: its blocks and columns say K and flip_budget), and eps or a channel other
    than the BSC that the study fixed instead of making it a cell (a precision study at eps 0.1)."""
    cells = with_cells(cells)
    block_axes, _ = layout(cells)
    values = {axis_name(c): cells[c] for c in block_axes if axis_name(c) not in ("dataset", "bits", "channel")}
    for name in ("eps", "channel"):   # fixed by the study: on every entry, in no heading
        if R.CELL_PREFIX + name not in cells and name in cells:
            values[name] = cells[name]
    said = []
    for name, column in values.items():
        one = column.dropna().unique()
        if len(one) != 1 or (name == "channel" and one[0] == "bsc"):
            continue   # a channel not the paper's BSC that is a cell axis is in the block names (`shown`)
        said.append(setting(name, one[0], latex, " = "))
    return "Every entry at " + ", ".join(said) + ". " if said else ""


def caption(cells: pd.DataFrame, confirmed: bool = False, provisional: bool = False, latex: bool = True) -> str:
    ns = sorted(set(int(n) for n in cells.n)) if len(cells) else [0]
    n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]}"
    seeds = f"mean $\\pm$ std over seeds ({n} per cell). " if ns[-1] > 1 else f"one seed per cell ({n}). "
    searched = "config" not in cells or (cells.config != "(none searched)").any()
    how = ("chosen by validation distortion on the same runs that are reported. PROVISIONAL: search results on "
           "the search seeds; the study's confirmation phase has not run" if provisional else
           "chosen by validation distortion in a search on other seeds, then trained on every seed reported here"
           if confirmed and searched else
           "of each arm (nothing searched), trained on every seed reported here" if confirmed else
           "chosen by validation distortion on the same runs that are reported (search results, no confirmation phase)")
    text = ("Test distortion (Table 1's measure: BCE per pixel for Binary MNIST, squared error per image "
            f"otherwise) of the configuration {how}; " + seeds + held(cells, latex) +
            "Bold: best in its column. $^\\dagger$: not significantly different from the best "
            "(Welch's t-test, $p \\geq 0.05$).")
    return text if latex else text.replace("$\\pm$", "±").replace("$^\\dagger$", "†").replace("$p \\geq 0.05$", "p >= 0.05")


def to_latex(cells: pd.DataFrame, label: str = "tab:table1", confirmed: bool = False,
             planned: list[str] | None = None, provisional: bool = False) -> str:
    """The paper's Table 1 layout: a block per dataset, rows NECST/ABF/IABF, columns eps; booktabs."""
    def fmt(row):
        text = _number(row, " $\\pm$ ")
        text = f"\\textbf{{{text}}}" if row.best else text
        return text + ("$^\\dagger$" if row.tied else "")

    grid, column, values = _grid(cells, fmt, planned)
    lines = ["\\begin{table}[t]", "\\centering", "\\begin{tabular}{l" + "c" * len(values) + "}", "\\toprule"]
    for i, (name, rows) in enumerate(grid):
        if i:
            lines.append("\\midrule")
        lines.append(" & ".join([name.replace("_", "\\_"), *(column_heading(column, v, True) for v in values)])
                     + " \\\\")
        lines.append("\\midrule")
        lines += [" & ".join([label_, *entries]) + " \\\\" for label_, entries in rows]
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption(cells, confirmed, provisional)}}}", f"\\label{{{label}}}",
              "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(cells: pd.DataFrame, confirmed: bool = False, planned: list[str] | None = None,
                provisional: bool = False) -> str:
    def fmt(row):
        text = _number(row, " ± ")
        return (f"**{text}**" if row.best else text) + (" †" if row.tied else "")

    grid, column, values = _grid(cells, fmt, planned)
    out = []
    for name, rows in grid:
        out += [f"| {name} | " + " | ".join(column_heading(column, v, False) for v in values) + " |",
                "|---|" + "---|" * len(values)]
        out += [f"| {label_} | " + " | ".join(entries) + " |" for label_, entries in rows]
        out.append("")
    return "\n".join(out) + "\n" + caption(cells, confirmed, provisional, latex=False) + "\n"


def to_csv(cells: pd.DataFrame) -> str:
    """One row per entry: a column per cell axis (its name), then the entry's numbers."""
    cells = with_cells(cells)
    axes = cell_columns(cells)
    cols = [*axes, *(c for c in ("dataset", "bits", "method", "eps", "arm", "config", "lam", "K", "n", "val", "test",
                                 "std", "best", "tied", "p_value", "run_ids") if R.CELL_PREFIX + c not in axes)]
    out = cells[cols].rename(columns={c: axis_name(c) for c in axes})
    out["run_ids"] = out["run_ids"].map(" ".join)
    return out.to_csv(index=False)


def cost(trials: pd.DataFrame, plan: dict | None = None) -> pd.DataFrame:
    """What each cell cost, over all its runs (early-stopped and failed ones included): trial-epochs
    (one per seed and epoch) spent in the search and in the confirmation, beside what the full grid
    without early stopping would have cost (from the study's plan, when it logged one)."""
    df = trials.assign(gpu_hours=trials.get("metric.sys/gpu_seconds", 0.0) / 3600,
                       trial_hours=trials.get("metric.sys/wall_seconds", 0.0) / 3600,
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


# --- reproduction report -------------------------------------------------------------------------

def paper_table1(path: str | Path = PAPER_TABLE1) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def version(arm: str, method: str) -> str:
    """Which version of the method an arm is: the paper's equations for an arm named by its method
    alone, else what its name adds (`iabf reference` -> `reference`)."""
    return "paper" if arm == method else arm.removeprefix(method).strip() or arm


def paper_setting(cells: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The entries in the paper's setting (BSC, the paper's code length, test eps = eps, K = 5, the
    adversary's budget = eps, the dataset's likelihood and split, float32), and per reason how many entries were left out (an entry can have
    several reasons; a parameter a frame does not carry counts as its default)."""
    def value(c: str, default):
        col = f"param.{c}"
        return cells[col] if col in cells else pd.Series(default, index=cells.index)

    eps = value("eps", float("nan")).where(value("eps", float("nan")).notna(), cells.eps)
    why = {"not the BSC": value("channel", "bsc") != "bsc",
           "not the paper's code length": value("n_bits", 0) != 0,
           "test eps differs from the training eps": ~value("test_eps", -1.0).isin([-1.0]) &
           (value("test_eps", -1.0) != eps),
           "K is not 5": value("K", 5) != 5,
           "the adversary's budget is not eps": ~value("flip_budget", -1.0).isin([-1.0]) &
           (value("flip_budget", -1.0) != eps),
           "not the dataset's own likelihood or validation split": (value("likelihood", "auto") != "auto") |
           (value("n_valid", 0).astype(str) != "0"),
           "not float32": value("precision", "fp32") != "fp32"}
    out = pd.Series(False, index=cells.index)
    for mask in why.values():
        out |= mask
    return cells[~out], {reason: int(mask.sum()) for reason, mask in why.items() if mask.any()}


def reproduction(cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper per entry in the paper's setting (paper_setting; each arm of a method
    against the paper's number for that method): absolute and relative difference (ours - paper),
    and `closest`: per paper number, the arm nearest to it. `attrs["left_out"]`: the entries not in
    the paper's setting, per reason."""
    cells = cells if "arm" in cells else cells.assign(arm=cells.method)
    cells, left_out = paper_setting(cells)
    ours = cells[[*CELL, "arm", "test", "std", "n"]].rename(columns={"test": "ours"})
    df = ours.merge(paper.rename(columns={"test": "paper"}), on=CELL, how="outer")
    df["arm"] = df.arm.fillna(df.method)
    df["n"] = df["n"].astype("Int64")
    df["abs_diff"] = df.ours - df.paper
    df["rel_diff"] = df.abs_diff / df.paper
    gap = df.abs_diff.abs().fillna(math.inf)
    df["closest"] = gap.eq(gap.groupby([df[c] for c in CELL]).transform("min")) & df.ours.notna() & df.paper.notna()
    df = df.sort_values([*CELL, "arm"]).reset_index(drop=True)
    df.attrs["left_out"] = left_out
    return df


def ordering(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per column (dataset, bits, eps) and version of the methods (the paper's equations, or a
    variant all three methods have, such as the authors' code): does IABF <= ABF <= NECST hold?"""
    table = table if "arm" in table else table.assign(arm=table.method)
    table = table.assign(version=[version(a, m) for a, m in zip(table.arm, table.method)])
    rows = []
    for (dataset, bits, eps, ver), col in table.groupby(["dataset", "bits", "eps", "version"]):
        v = dict(zip(col.method, col[value]))
        if ver != "paper" and not all(m in v for m in METHODS):
            continue
        known = all(m in v and math.isfinite(v[m]) for m in METHODS)
        rows.append({"dataset": dataset, "bits": bits, "eps": eps, "version": ver,
                     f"{value}_ordered": (v["iabf"] <= v["abf"] <= v["necst"]) if known else None})
    return pd.DataFrame(rows, columns=["dataset", "bits", "eps", "version", f"{value}_ordered"])


def reproduction_markdown(rep: pd.DataFrame) -> str:
    ours_cells = rep[rep.ours.notna()]
    left_out = rep.attrs.get("left_out", {})
    note = ("Entries not in the paper's setting (BSC, the paper's code length, test eps = eps, K = 5, the "
            "adversary's budget = eps, the dataset's likelihood and split, float32) are left out: " + "; ".join(f"{n} {why}" for why, n in left_out.items()) +
            " (an entry may have several reasons).") if left_out else ""
    if ours_cells.empty:
        return "# Reproduction of Table 1\n\nNo cell of this study is in the paper's Table 1." + \
            (f" {note}" if note else "") + "\n"
    paper_order = ordering(ours_cells.assign(arm=ours_cells.method), "paper").drop(columns="version")
    order = ordering(ours_cells, "ours").merge(paper_order, on=["dataset", "bits", "eps"], how="left")
    several = ours_cells.groupby(CELL).size().max() > 1
    lines = ["# Reproduction of Table 1", "",
             "Test distortion, ours (best configuration by validation) beside the paper's. "
             "diff = ours - paper; rel = diff / paper." +
             (" Where a method has several arms (versions), `closest` marks the one nearest the paper's number."
              if several else "") + (f" {note}" if note else ""), "",
             "| dataset | bits | method | arm | eps | ours | n | paper | diff | rel | closest |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ours_cells.itertuples():
        std = f" ± {r.std:.3f}" if r.n > 1 and math.isfinite(r.std) else ""
        paper = f"{r.paper:.3f}" if math.isfinite(r.paper) else "--"
        diff = f"{r.abs_diff:+.3f}" if math.isfinite(r.abs_diff) else "--"
        rel = f"{r.rel_diff:+.1%}" if math.isfinite(r.rel_diff) else "--"
        lines.append(f"| {r.dataset} | {r.bits} | {r.method} | {r.arm} | {r.eps:g} | {r.ours:.3f}{std} | {r.n} | "
                     f"{paper} | {diff} | {rel} | {'yes' if r.closest else ''} |")

    def yes(x) -> str:
        return "--" if x is None or (isinstance(x, float) and math.isnan(x)) else ("yes" if x else "no")

    lines += ["", "Does IABF <= ABF <= NECST hold in each column (ours per version of the methods)?", "",
              "| dataset | bits | eps | version | ours | paper |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.dataset} | {r.bits} | {r.eps:g} | {r.version} | {yes(r.ours_ordered)} | {yes(r.paper_ordered)} |"
              for r in order.itertuples()]
    return "\n".join(lines) + "\n"
