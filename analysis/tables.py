"""Table 1 from a trials DataFrame (analysis.fetch): pure functions, DataFrame in, text out.

Cell selection follows the paper: for each (dataset, bits, method, eps) the configuration (lambda
for IABF, and any other searched nuisance parameter) with the lowest mean *validation* distortion
over its seeds is chosen, and its *test* distortion is reported.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd
from scipy import stats

METHODS = ("necst", "abf", "iabf")
METHOD_NAMES = {"necst": "NECST", "abf": "ABF", "iabf": "IABF"}
DATASET_ORDER = ("binary_mnist", "omniglot", "cifar10", "mnist", "digits")   # the paper's order, then ours
DATASET_NAMES = {"binary_mnist": "Binary MNIST", "mnist": "MNIST", "omniglot": "Omniglot",
                 "cifar10": "CIFAR10", "digits": "Digits (8x8)"}
PAPER_TABLE1 = Path(__file__).with_name("paper_table1.csv")
CELL = ["dataset", "bits", "method", "eps"]


def select_cells(trials: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per cell: the configuration chosen by mean validation distortion, its test mean,
    std, n, per-seed values; `best` (lowest test mean in its column) and `tied` (not significantly
    different from the best: Welch's t-test, p >= alpha; needs 2+ seeds on both sides)."""
    if trials.empty:
        return pd.DataFrame(columns=[*CELL, "config_hash", "lam", "K", "val", "test", "std", "n", "tests",
                                     "run_ids", "best", "tied", "p_value"])
    configs = (trials.groupby([*CELL, "config_hash"], dropna=False)
               .agg(lam=("lam", "first"), K=("K", "first"), val=("val", "mean"), test=("test", "mean"),
                    std=("test", "std"), n=("test", "size"), tests=("test", list), run_ids=("run_id", list))
               .reset_index())
    cells = configs.sort_values("val", kind="stable").groupby(CELL, dropna=False).head(1).copy()
    cells["best"], cells["tied"], cells["p_value"] = False, False, float("nan")
    for _, col in cells.groupby(["dataset", "bits", "eps"]):
        best = col["test"].idxmin()
        cells.loc[best, "best"] = True
        for i in col.index.drop(best):
            a, b = cells.at[i, "tests"], cells.at[best, "tests"]
            if len(a) >= 2 and len(b) >= 2:
                p = stats.ttest_ind(a, b, equal_var=False).pvalue
                cells.at[i, "p_value"] = p
                cells.at[i, "tied"] = bool(p >= alpha) if math.isfinite(p) else True
    return cells.sort_values(CELL).reset_index(drop=True)


def _blocks(cells: pd.DataFrame):
    """(dataset, bits) blocks in the paper's order, and the eps columns."""
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    blocks = sorted({(d, int(b)) for d, b in zip(cells.dataset, cells.bits)}, key=lambda k: (order.get(k[0], 99), k))
    return blocks, sorted(cells.eps.unique())


def _grid(cells: pd.DataFrame, fmt):
    """Rows of (label, [entries]) per block, with missing cells warned about and shown as '--'."""
    blocks, eps_cols = _blocks(cells)
    out = []
    for dataset, bits in blocks:
        rows = []
        for method in METHODS:
            entries = []
            for eps in eps_cols:
                hit = cells[(cells.dataset == dataset) & (cells.bits == bits) & (cells.method == method) & (cells.eps == eps)]
                if hit.empty:
                    # one location and message: Python shows it once, however many formats are written
                    warnings.warn(f"missing cell: {dataset} {bits}-bit {method} eps {eps:g}")
                    entries.append("--")
                else:
                    entries.append(fmt(hit.iloc[0]))
            rows.append((f"{bits}-bit {METHOD_NAMES[method]}", entries))
        out.append((DATASET_NAMES.get(dataset, dataset), rows))
    return out, eps_cols


def _number(row, pm: str) -> str:
    text = f"{row.test:.3f}"
    if row.n > 1 and math.isfinite(row["std"]):
        text += f"{pm}{row['std']:.3f}"
    return text


def caption(cells: pd.DataFrame) -> str:
    ns = sorted(set(int(n) for n in cells.n)) if len(cells) else [0]
    n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]}"
    seeds = f"mean $\\pm$ std over seeds ({n} per cell). " if ns[-1] > 1 else f"one seed per cell ({n}). "
    return ("Test distortion (Table 1's measure: BCE per pixel for Binary MNIST, squared error per image "
            "otherwise) of the configuration chosen by validation distortion; " + seeds +
            "Bold: best in its column. $^\\dagger$: not significantly different from the best "
            "(Welch's t-test, $p \\geq 0.05$).")


def to_latex(cells: pd.DataFrame, label: str = "tab:table1") -> str:
    """The paper's Table 1 layout: a block per dataset, rows NECST/ABF/IABF, columns eps; booktabs."""
    def fmt(row):
        text = _number(row, " $\\pm$ ")
        text = f"\\textbf{{{text}}}" if row.best else text
        return text + ("$^\\dagger$" if row.tied else "")

    grid, eps_cols = _grid(cells, fmt)
    lines = ["\\begin{table}[t]", "\\centering", "\\begin{tabular}{l" + "c" * len(eps_cols) + "}", "\\toprule"]
    for i, (name, rows) in enumerate(grid):
        if i:
            lines.append("\\midrule")
        lines.append(" & ".join([name, *(f"$\\epsilon={e:g}$" for e in eps_cols)]) + " \\\\")
        lines.append("\\midrule")
        lines += [" & ".join([label_, *entries]) + " \\\\" for label_, entries in rows]
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption(cells)}}}", f"\\label{{{label}}}",
              "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(cells: pd.DataFrame) -> str:
    def fmt(row):
        text = _number(row, " ± ")
        return (f"**{text}**" if row.best else text) + (" †" if row.tied else "")

    grid, eps_cols = _grid(cells, fmt)
    out = []
    for name, rows in grid:
        out += [f"| {name} | " + " | ".join(f"eps {e:g}" for e in eps_cols) + " |",
                "|---|" + "---|" * len(eps_cols)]
        out += [f"| {label_} | " + " | ".join(entries) + " |" for label_, entries in rows]
        out.append("")
    return "\n".join(out) + "\n" + caption(cells).replace("$\\pm$", "±").replace("$^\\dagger$", "†").replace(
        "$p \\geq 0.05$", "p >= 0.05") + "\n"


def to_csv(cells: pd.DataFrame) -> str:
    cols = [*CELL, "lam", "K", "n", "val", "test", "std", "best", "tied", "p_value", "run_ids"]
    out = cells[cols].copy()
    out["run_ids"] = out["run_ids"].map(" ".join)
    return out.to_csv(index=False)


def cost(trials: pd.DataFrame) -> pd.DataFrame:
    """What each cell cost, over all its trials (early-stopped and failed ones included)."""
    df = trials.assign(gpu_hours=trials.get("metric.sys/gpu_seconds", 0.0) / 3600,
                       trial_hours=trials.get("metric.sys/wall_seconds", 0.0) / 3600).fillna(
        {"gpu_hours": 0.0, "trial_hours": 0.0})
    return (df.groupby(CELL).agg(trials=("run_id", "size"), trial_hours=("trial_hours", "sum"),
                                 gpu_hours=("gpu_hours", "sum")).reset_index())


# --- reproduction report -------------------------------------------------------------------------

def paper_table1(path: str | Path = PAPER_TABLE1) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def reproduction(cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper per cell: absolute and relative difference (ours - paper)."""
    ours = cells[CELL + ["test", "std", "n"]].rename(columns={"test": "ours"})
    df = ours.merge(paper.rename(columns={"test": "paper"}), on=CELL, how="outer")
    df["n"] = df["n"].astype("Int64")
    df["abs_diff"] = df.ours - df.paper
    df["rel_diff"] = df.abs_diff / df.paper
    return df.sort_values(CELL).reset_index(drop=True)


def ordering(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per column (dataset, bits, eps): does IABF <= ABF <= NECST hold for `value`?"""
    rows = []
    for (dataset, bits, eps), col in table.groupby(["dataset", "bits", "eps"]):
        v = dict(zip(col.method, col[value]))
        known = all(m in v and math.isfinite(v[m]) for m in METHODS)
        rows.append({"dataset": dataset, "bits": bits, "eps": eps,
                     f"{value}_ordered": (v["iabf"] <= v["abf"] <= v["necst"]) if known else None})
    return pd.DataFrame(rows)


def reproduction_markdown(rep: pd.DataFrame) -> str:
    ours_cells = rep[rep.ours.notna()]
    if ours_cells.empty:
        return "# Reproduction of Table 1\n\nNo cell of this study is in the paper's Table 1.\n"
    order = ordering(ours_cells, "ours").merge(ordering(ours_cells, "paper"), on=["dataset", "bits", "eps"])
    lines = ["# Reproduction of Table 1", "",
             "Test distortion, ours (best configuration by validation) beside the paper's. "
             "diff = ours - paper; rel = diff / paper.", "",
             "| dataset | bits | method | eps | ours | n | paper | diff | rel |", "|---|---|---|---|---|---|---|---|---|"]
    for r in ours_cells.itertuples():
        std = f" ± {r.std:.3f}" if r.n > 1 and math.isfinite(r.std) else ""
        paper = f"{r.paper:.3f}" if math.isfinite(r.paper) else "--"
        diff = f"{r.abs_diff:+.3f}" if math.isfinite(r.abs_diff) else "--"
        rel = f"{r.rel_diff:+.1%}" if math.isfinite(r.rel_diff) else "--"
        lines.append(f"| {r.dataset} | {r.bits} | {r.method} | {r.eps:g} | {r.ours:.3f}{std} | {r.n} | {paper} | {diff} | {rel} |")
    def yes(x) -> str:
        return "--" if x is None or (isinstance(x, float) and math.isnan(x)) else ("yes" if x else "no")

    lines += ["", "Does IABF <= ABF <= NECST hold in each column?", "",
              "| dataset | bits | eps | ours | paper |", "|---|---|---|---|---|"]
    lines += [f"| {r.dataset} | {r.bits} | {r.eps:g} | {yes(r.ours_ordered)} | {yes(r.paper_ordered)} |"
              for r in order.itertuples()]
    return "\n".join(lines) + "\n"
