"""The reproduction report: our entries against the paper's Table 1 (analysis/paper_table1.csv), value by
value and in the order of the methods."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.entries import METHODS
from iabf.record import PARAM


PAPER_TABLE1 = Path(__file__).with_name("paper_table1.csv")


CELL = ["dataset", "bits", "method", "eps"]      # the paper's entries, which the reproduction compares


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
        col = PARAM + c
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


def chosen_text(by: str) -> str:
    return "best configuration by validation" if by == "validation distortion" else f"the configuration chosen by {by}"


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
             f"Test distortion, ours ({chosen_text(rep.attrs.get('by', 'validation distortion'))}) beside the paper's. "
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
