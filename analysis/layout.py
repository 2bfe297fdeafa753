"""A table's layout: the entries (analysis.entries) as LaTeX, Markdown and CSV. Table 1's shape (a block
per dataset, a column per eps) for studies shaped like it; an ablation gets a block per value of its
other axes and a column per cell; and a grid per arm across the ablation's axes."""
from __future__ import annotations

import math
import warnings

import pandas as pd

from analysis.entries import DATASET_ORDER, arm_label, arms, axis_name, cell_columns, dataset_name, with_cells
from iabf import record as R


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


def caption(cells: pd.DataFrame, confirmed: bool = False, provisional: bool = False, latex: bool = True,
            by: str = "validation distortion") -> str:
    """by: how the study chose (analysis.entries.chosen_by: its metric and mode)."""
    ns = sorted(set(int(n) for n in cells.n)) if len(cells) else [0]
    n = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]}"
    seeds = f"mean $\\pm$ std over seeds ({n} per cell). " if ns[-1] > 1 else f"one seed per cell ({n}). "
    searched = "config" not in cells or (cells.config != "(none searched)").any()
    how = (f"chosen by {by} on the same runs that are reported. PROVISIONAL: search results on "
           "the search seeds; the study's confirmation phase has not run" if provisional else
           f"chosen by {by} in a search on other seeds, then trained on every seed reported here"
           if confirmed and searched else
           "of each arm (nothing searched), trained on every seed reported here" if confirmed else
           f"chosen by {by} on the same runs that are reported (search results, no confirmation phase)")
    text = ("Test distortion (Table 1's measure: BCE per pixel for Binary MNIST, squared error per image "
            f"otherwise) of the configuration {how}; " + seeds + held(cells, latex) +
            "Bold: best in its column. $^\\dagger$: not significantly different from the best "
            "(Welch's t-test, $p \\geq 0.05$).")
    return text if latex else text.replace("$\\pm$", "±").replace("$^\\dagger$", "†").replace("$p \\geq 0.05$", "p >= 0.05")


def to_latex(cells: pd.DataFrame, label: str = "tab:table1", confirmed: bool = False,
             planned: list[str] | None = None, provisional: bool = False, by: str = "validation distortion") -> str:
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
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption(cells, confirmed, provisional, by=by)}}}", f"\\label{{{label}}}",
              "\\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(cells: pd.DataFrame, confirmed: bool = False, planned: list[str] | None = None,
                provisional: bool = False, by: str = "validation distortion") -> str:
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
    return "\n".join(out) + "\n" + caption(cells, confirmed, provisional, latex=False, by=by) + "\n"


def to_csv(cells: pd.DataFrame) -> str:
    """One row per entry: a column per cell axis (its name), then the entry's numbers."""
    cells = with_cells(cells)
    axes = cell_columns(cells)
    cols = [*axes, *(c for c in ("dataset", "bits", "method", "eps", "arm", "config", "lam", "K", "n", "val", "test",
                                 "std", "best", "tied", "p_value", "run_ids") if R.CELL_PREFIX + c not in axes)]
    out = cells[cols].rename(columns={c: axis_name(c) for c in axes})
    out["run_ids"] = out["run_ids"].map(" ".join)
    return out.to_csv(index=False)
