"""analysis/layout.py: Table 1 in LaTeX, Markdown and CSV, its markers and its caption, on entries of known
values."""
import warnings

import pandas as pd
import pytest

from frames import trial
from analysis import entries, layout, reproduction

def test_latex_against_the_expected_string():
    df = pd.DataFrame([trial("necst", 0.1, 14.5), trial("abf", 0.1, 13.4), trial("iabf", 0.1, 13.25),
                       trial("necst", 0.2, 22.5), trial("abf", 0.2, 22.0), trial("iabf", 0.2, 22.1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete table warns about nothing
        tex = layout.to_latex(entries.select_cells(df))
    expected = r"""\begin{table}[t]
\centering
\begin{tabular}{lcc}
\toprule
MNIST & $\epsilon=0.1$ & $\epsilon=0.2$ \\
\midrule
100-bit NECST & 14.500 & 22.500 \\
100-bit ABF & 13.400 & \textbf{22.000} \\
100-bit IABF & \textbf{13.250} & 22.100 \\
\bottomrule
\end{tabular}
\caption{""" + layout.caption(entries.select_cells(df)) + r"""}
\label{tab:table1}
\end{table}
"""
    assert tex == expected
    assert "one seed per cell (n = 1)" in tex


def test_bold_and_significance_markers_on_a_known_case():
    rows = []
    for s, (n, a, i) in enumerate([(15.0, 13.1, 13.0), (15.1, 13.3, 13.1), (15.2, 13.0, 13.2)]):
        rows += [trial("necst", 0.1, n, seed=s), trial("abf", 0.1, a, seed=s), trial("iabf", 0.1, i, seed=s)]
    cells = entries.select_cells(pd.DataFrame(rows)).set_index("method")
    assert cells.loc["iabf", "best"] and not cells.loc["abf", "best"]
    assert cells.loc["abf", "tied"] and cells.loc["abf", "p_value"] > 0.5     # 13.13 vs 13.10: a tie
    assert not cells.loc["necst", "tied"] and cells.loc["necst", "p_value"] < 1e-3
    assert (cells.n == 3).all()
    tex = layout.to_latex(cells.reset_index())
    assert r"\textbf{13.100 $\pm$ 0.100}" in tex
    assert r"13.133 $\pm$ 0.153$^\dagger$" in tex and r"15.100 $\pm$ 0.100 " in tex
    assert "(n = 3 per cell)" in tex
    md = layout.to_markdown(cells.reset_index())
    assert "**13.100 ± 0.100**" in md and "13.133 ± 0.153 †" in md


def test_missing_cells_print_dashes_and_warn():
    df = pd.DataFrame([trial("necst", 0.1, 14.5), trial("iabf", 0.1, 13.25), trial("iabf", 0.2, 22.0)])
    with pytest.warns(UserWarning, match="missing cell: mnist 100-bit abf eps 0.1"):
        tex = layout.to_latex(entries.select_cells(df))
    assert "100-bit ABF & -- & -- \\\\" in tex and "100-bit NECST & 14.500 & -- \\\\" in tex
    assert "--" in layout.to_markdown(entries.select_cells(df))
    assert layout.to_latex(entries.select_cells(df.iloc[:0])).count("tabular") == 2   # empty: no crash


def test_arms_of_one_method_are_rows_of_their_own_and_versions_are_ordered_apart():
    """The fidelity layout: each method by the paper's equations and by the authors' code (`reference`
    arms). Rows per arm; IABF <= ABF <= NECST judged per version; per paper number the closest arm."""
    rows = []
    for arm, tests in (("necst", 14.0), ("abf", 14.2), ("iabf", 14.3), ("necst reference", 14.4),
                       ("abf reference", 13.4), ("iabf reference", 13.2)):
        t = trial(arm.split()[0], 0.1, tests)
        rows.append({**t, "arm": arm, "run_id": arm})
    cells = entries.select_cells(pd.DataFrame(rows))
    assert entries.arms(cells) == ["necst", "necst reference", "abf", "abf reference", "iabf", "iabf reference"]
    tex = layout.to_latex(cells, confirmed=True)
    assert "100-bit IABF reference & \\textbf{13.200}" in tex and "100-bit IABF & 14.300" in tex
    assert "of each arm (nothing searched), trained on every seed reported here" in tex
    order = reproduction.ordering(cells, "test").set_index("version").test_ordered
    assert order.to_dict() == {"paper": False, "reference": True}
    rep = reproduction.reproduction(cells, reproduction.paper_table1())
    closest = rep[rep.closest].set_index("method").arm.to_dict()
    assert closest == {"necst": "necst reference", "abf": "abf reference", "iabf": "iabf reference"}


def test_a_table_says_the_cell_values_no_heading_shows():
    """An ablation of K x flip budget at one eps and on the BEC: blocks say K, columns flip_budget,
    so the caption says eps 0.1 (the block names say the BEC); Table 1's layout (eps in the columns)
    adds nothing to its caption."""
    rows = [{**trial(m, 0.1, 10.0 + k + b + s, seed=s), "arm": m, "run_id": f"{m}{k}{b}{s}",
             "cell.dataset": "mnist", "cell.bits": 100, "cell.eps": 0.1, "cell.channel": "bec", "cell.K": k,
             "cell.flip_budget": b} for m in ("necst", "abf", "iabf") for k in (1, 2) for b in (0.05, 0.1) for s in (0, 1)]
    cells = entries.select_cells(pd.DataFrame(rows))
    assert layout.layout(cells)[1] == "cell.flip_budget"
    tex, md = layout.to_latex(cells, confirmed=True), layout.to_markdown(cells, confirmed=True)
    assert "Every entry at $\\epsilon = 0.1$. " in tex and "MNIST, channel=bec, K=1 & flip\\_budget=0.05" in tex
    assert "Every entry at eps = 0.1. " in md
    paper = entries.select_cells(pd.DataFrame([trial("necst", e, 14.0) for e in (0.1, 0.2)]))
    assert "Every entry" not in layout.to_latex(paper) and "Every entry" not in layout.to_markdown(paper)
    # eps fixed by the study, not a cell axis (a precision study): its entries still say where
    fixed = [{**trial(m, 0.1, 20.0 + s, seed=s), "arm": m, "run_id": f"{m}{p}{s}", "cell.dataset": "mnist",
              "cell.bits": 100, "cell.precision": p} for m in ("necst", "abf", "iabf") for p in ("fp32", "bf16") for s in (0, 1)]
    assert "Every entry at $\\epsilon = 0.1$. " in layout.to_latex(entries.select_cells(pd.DataFrame(fixed)))
    # a column of test noise says so: it is not the training noise the paper's columns are
    robust = [{**trial(m, 0.1, 20.0 + t + s, seed=s), "arm": m, "run_id": f"{m}{t}{s}", "cell.dataset": "mnist",
               "cell.bits": 100, "cell.eps": 0.1, "cell.test_eps": t} for m in ("necst", "abf", "iabf")
              for t in (0.1, 0.3) for s in (0, 1)]
    robust = entries.select_cells(pd.DataFrame(robust))
    assert layout.layout(robust)[1] == "cell.test_eps"
    assert "test $\\epsilon=0.3$" in layout.to_latex(robust) and "| test eps 0.3 |" in layout.to_markdown(robust)
    assert "Every entry at eps = 0.1. " in layout.to_markdown(robust)
