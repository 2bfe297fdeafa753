"""analysis/significance.py: Welch's tests between arms and across a cell axis, Holm's adjustment, the tallies,
on known numbers."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from frames import trial
from analysis import entries, significance
from iabf.config import Config
from studies.tracking import config_hash

def test_each_arm_is_contrasted_with_necst_its_method_and_necst_of_its_version():
    """diff = arm - baseline, Welch's p and CI on known seeds; every baseline an arm has, and only
    those (ABF topk has no ABF by the paper's equations here)."""
    base = {"necst": [15.0, 15.1, 15.2], "iabf": [15.0, 15.2, 15.1], "iabf topk": [14.0, 14.1, 14.2],
            "abf topk": [14.1, 14.2, 14.3],
            "necst reference": [16.0, 16.2, 16.4], "iabf reference": [16.0, 16.2, 16.4]}
    rows = [{**trial(arm.split()[0], 0.1, t, seed=s), "arm": arm, "run_id": f"{arm}{s}"}
            for arm, tests in base.items() for s, t in enumerate(tests)]
    con = significance.contrasts(entries.select_cells(pd.DataFrame(rows))).set_index(["arm", "against"])
    assert sorted(con.index) == sorted([("iabf", "necst"), ("iabf topk", "necst"), ("iabf topk", "iabf"),
                                        ("iabf topk", "abf topk"), ("abf topk", "necst"),
                                        ("necst reference", "necst"), ("iabf reference", "necst"),
                                        ("iabf reference", "iabf"), ("iabf reference", "necst reference")])
    topk = con.loc[("iabf topk", "necst")]
    assert topk["diff"] == pytest.approx(-1.0) and topk.p_value < 1e-3 and topk.low < -1.0 < topk.high < 0
    same = con.loc[("iabf reference", "necst reference")]
    assert same["diff"] == pytest.approx(0.0) and same.p_value == pytest.approx(1.0) and same.low < 0 < same.high
    md = significance.contrasts_markdown(con.reset_index())
    assert "| IABF topk | NECST | -1.000 (" in md and " * | 3 vs 3 |" in md
    # Holm: the smallest p times the number of contrasts, then never below an earlier one, at most 1
    ranked = con.sort_values("p_value")
    assert ranked.p_holm.iloc[0] == pytest.approx(min(1.0, ranked.p_value.iloc[0] * len(con)))
    assert ranked.p_holm.is_monotonic_increasing and (con.p_holm >= con.p_value).all() and con.p_holm.max() <= 1.0


def test_iabf_is_contrasted_with_abf_of_its_version_what_the_infomax_term_adds():
    base = {"necst": [15.0, 15.1, 15.2], "abf": [14.0, 14.1, 14.2], "iabf": [14.0, 14.2, 14.1],
            "abf topk": [13.0, 13.1, 13.2], "iabf topk": [13.5, 13.6, 13.7]}
    rows = [{**trial(arm.split()[0], 0.1, t, seed=s), "arm": arm, "run_id": f"{arm}{s}"}
            for arm, tests in base.items() for s, t in enumerate(tests)]
    con = significance.contrasts(entries.select_cells(pd.DataFrame(rows))).set_index(["arm", "against"])
    assert {("iabf", "abf"), ("iabf topk", "abf topk"), ("abf topk", "abf"), ("iabf topk", "iabf")} <= set(con.index)
    assert ("iabf topk", "abf") not in con.index                     # another version's ABF: not a baseline
    assert con.loc[("iabf", "abf"), "diff"] == pytest.approx(0.0, abs=1e-9)
    assert con.loc[("iabf topk", "abf topk"), "diff"] == pytest.approx(0.5)
    # across cells: one cell here, ABF topk significantly better than NECST, IABF level with ABF
    t = significance.tally(con.reset_index()).set_index(["arm", "against"])
    assert t.loc[("iabf", "abf"), ["better", "worse", "neither"]].tolist() == [0, 0, 1]
    assert t.loc[("abf topk", "necst"), "mean_rel_diff"] == pytest.approx(13.1 / 15.1 - 1)
    md = significance.tally_markdown(t.reset_index())
    assert "| IABF | ABF | 1 | 0 | 0 | 1 | 0 | 0 / 0 | +0.0% | -- | -- |" in md
    assert t.loc[("abf topk", "necst"), ["lower", "better_raw", "worse_raw"]].tolist() == [1, 1, 0]


def test_holm_adjustment_on_known_p_values():
    p = pd.Series([0.01, 0.04, float("nan"), 0.03, 0.2])
    assert significance.holm(p).round(6).tolist()[:2] == [0.04, 0.09] and significance.holm(p).isna().tolist()[2]
    assert significance.holm(p).round(6).tolist()[3:] == [0.09, 0.2]


@given(st.lists(st.floats(-50, 50), min_size=2, max_size=8), st.lists(st.floats(-50, 50), min_size=2, max_size=8))
def test_welch_from_summary_statistics_is_welch_from_the_samples(a, b):
    if np.std(a) < 1e-3 or np.std(b) < 1e-3:
        return                                        # a constant sample: no t-test either way
    low, high, p = significance.welch(np.mean(a), np.std(a, ddof=1), len(a), np.mean(b), np.std(b, ddof=1), len(b))
    t = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(t.pvalue, rel=1e-6, abs=1e-9)
    assert (low, high) == pytest.approx(tuple(t.confidence_interval(0.95)), rel=1e-6, abs=1e-9)


def test_an_ablation_axis_is_contrasted_against_its_default_with_every_other_axis_equal():
    """A cell axis beyond Table 1's (precision): each arm at bf16 against the same arm at fp32 (the
    Config default) in the same dataset and eps; never across datasets or arms."""
    tests = {("mnist", "necst", "fp32"): [29.0, 29.2, 29.4], ("mnist", "necst", "bf16"): [29.5, 29.7, 29.9],
             ("mnist", "iabf", "fp32"): [28.0, 28.1, 28.2], ("mnist", "iabf", "bf16"): [28.0, 28.2, 28.1],
             ("binary_mnist", "necst", "bf16"): [0.18, 0.19, 0.2]}   # no fp32 here: nothing to contrast
    rows = []
    for (dataset, method, precision), values in tests.items():
        cfg = Config(dataset=dataset, method=method, precision=precision)
        rows += [{**trial(method, 0.1, t, seed=s, dataset=dataset), "arm": method, "run_id": f"{dataset}{method}{precision}{s}",
                  "config_hash": config_hash(cfg.to_dict()), "cell.dataset": dataset, "cell.bits": cfg.bits,
                  "cell.eps": 0.1, "cell.precision": precision} for s, t in enumerate(values)]
    cells = entries.select_cells(pd.DataFrame(rows))
    assert significance.contrasted_axes(cells) == ["cell.precision"]
    con = significance.axis_contrasts(cells, "cell.precision").set_index("arm")
    assert sorted(con.index) == ["iabf", "necst"] and set(con.baseline) == {"fp32"} and set(con.precision) == {"bf16"}
    assert con.loc["necst", "diff"] == pytest.approx(0.5) and con.loc["necst", "low"] > 0
    assert con.loc["iabf", "diff"] == pytest.approx(0.0, abs=1e-9) and con.loc["iabf", "low"] < 0 < con.loc["iabf", "high"]
    assert (con.p_holm >= con.p_value).all()
    md = significance.axis_contrasts_markdown(con.reset_index(), "precision")
    assert "| NECST | bf16 | fp32 | 29.7 | 29.2 | +0.5 (" in md


def test_an_axis_an_arm_does_not_use_gets_no_contrast_and_a_repeated_one_counts_once():
    """K x flip budget at eps 0.1: NECST has no adversary, so its entries are the same numbers at every
    budget. Across the budget it gets no contrast (it is named as not using it); across K its one
    contrast, the same in every budget's block, is one row that Holm counts once. The budget's
    baseline is the paper's, eps (Config's -1), not the smallest budget."""
    necst = {1: [31.0, 31.5, 32.0], 5: [25.0, 25.2, 24.9]}
    abf = {(1, 0.05): [32.0, 32.4, 33.0], (1, 0.1): [33.0, 34.0, 35.5], (5, 0.05): [25.0, 25.3, 24.8],
           (5, 0.1): [25.1, 25.4, 25.6]}
    rows = [{**trial(m, 0.1, t, seed=s), "arm": m, "run_id": f"{m}{k}{b}{s}", "cell.dataset": "mnist",
             "cell.bits": 100, "cell.eps": 0.1, "cell.K": k, "cell.flip_budget": b}
            for (m, k, b), values in [*(((("necst", k, b), necst[k]) for k in (1, 5) for b in (0.05, 0.1))),
                                      *((("abf", k, b), v) for (k, b), v in abf.items())]
            for s, t in enumerate(values)]
    cells = entries.select_cells(pd.DataFrame(rows))
    budget = significance.axis_contrasts(cells, "cell.flip_budget")
    assert set(budget.arm) == {"abf"} and budget.attrs["inert"] == ["necst"] and set(budget.baseline) == {"0.1"}
    assert "NECST: the same numbers, seed for seed, at every flip_budget" in significance.inert_text(budget, "flip_budget")
    k = significance.axis_contrasts(cells, "cell.K")
    assert len(k) == 3 and not k.attrs["inert"]                           # NECST once, ABF at each budget
    once = k[k.arm == "necst"].iloc[0]
    assert once["cell.flip_budget"] == "0.05, 0.1" and once["diff"] == pytest.approx(np.mean(necst[1]) - np.mean(necst[5]))
    assert list(k.p_holm) == pytest.approx(list(significance.holm(k.p_value)))     # a family of 3, not 4
    assert "| 0.05, 0.1 | NECST | 1 | 5 |" in significance.axis_contrasts_markdown(k, "K")
