"""Whether entries differ: Welch's t-tests between the arms of a cell and across a cell axis (all else
equal), Holm's adjustment, the tallies across cells, and the comparison with another study's committed
table (its table1.csv, from summary statistics). Pure functions: entries (analysis.entries) in, a
DataFrame or Markdown out."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.entries import METHODS, TableError, arm_label, axis_name, cell_columns, dataset_name, with_cells
from analysis.sequential import pooled_sd
from iabf import record as R


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


def baselines(arm: str, method: str, present) -> list[str]:
    """The arms of its cell (of `present`) an arm is contrasted with: NECST, its own method by the paper's
    equations, and the methods before it in the same version. The report's contrasts and the adaptive
    confirmation's family (studies/adaptive.py) are both these."""
    version = arm.removeprefix(method).strip()
    earlier = METHODS[:METHODS.index(method)] if method in METHODS else ()
    return [b for b in dict.fromkeys(("necst", method, *(f"{m} {version}".strip() for m in earlier)))
            if b != arm and b in present]


def contrasts(cells: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Each arm against the baselines of its column: NECST by the paper's equations, its own
    method by the paper's equations (an arm "iabf topk" against "iabf"), and the methods before it
    in the same version where the study has them ("iabf" against "abf" and "iabf topk" against
    "abf topk": what the infomax term adds to the same adversary; "iabf reference" against
    "necst reference").
    diff = arm - baseline in test distortion (negative: the arm is better), with Welch's t-test
    p-value and its `level` confidence interval of the difference (NaN where either side has fewer
    than 2 seeds), p_holm, the p-value adjusted for every contrast returned, and sd, the two arms' pooled
    seed-to-seed standard deviation (what a power analysis of the contrast starts from)."""
    cells = with_cells(cells)
    axes = cell_columns(cells)
    cols = [*axes, "dataset", "bits", "eps", "arm", "against", "diff", "low", "high", "p_value", "n", "n_against",
            "rel_diff", "sd"]
    rows = []
    for key, col in cells.groupby(axes, dropna=False):   # arms within one cell only
        key = key if isinstance(key, tuple) else (key,)
        dataset, bits, eps = col.dataset.iloc[0], col.bits.iloc[0], col.eps.iloc[0]
        by_arm = {r.arm: r for r in col.itertuples()}
        for r in col.itertuples():
            for base in baselines(r.arm, r.method, by_arm):
                a, b = list(r.tests), list(by_arm[base].tests)
                low, high, p = welch_samples(a, b, level)
                rows.append((*key, dataset, bits, eps, r.arm, base, r.test - by_arm[base].test, low, high, p, len(a),
                             len(b), r.test / by_arm[base].test - 1, pooled_sd(a, b)))
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


ENTRY = ["dataset", "bits", "eps", "arm", "method", "test", "std", "n"]


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
