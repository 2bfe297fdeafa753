"""analysis/entries.py and analysis/reproduction.py: the entries a table reports (the configuration chosen as the
study chose) and the reproduction against the paper, on known numbers."""

import pandas as pd
import pytest

from frames import trial
from analysis import entries, reproduction
from iabf import metrics as M
from iabf import record as R

def test_lambda_is_chosen_by_validation_not_by_test():
    df = pd.DataFrame([trial("iabf", 0.1, test=20.0, val=10.0, lam=0.1),   # best validation
                       trial("iabf", 0.1, test=5.0, val=11.0, lam=0.01),   # best test: must not win
                       trial("necst", 0.1, 30.0), trial("abf", 0.1, 30.0)])
    cells = entries.select_cells(df).set_index("method")
    assert cells.loc["iabf", "lam"] == 0.1 and cells.loc["iabf", "test"] == 20.0


def test_reproduction_deltas_and_ordering_on_known_numbers():
    df = pd.DataFrame([trial("necst", 0.1, 15.439), trial("abf", 0.1, 13.369), trial("iabf", 0.1, 13.0)])
    rep = reproduction.reproduction(entries.select_cells(df), reproduction.paper_table1()).set_index(["dataset", "method", "eps"])
    assert rep.loc[("mnist", "necst", 0.1), "abs_diff"] == pytest.approx(1.0)
    assert rep.loc[("mnist", "necst", 0.1), "rel_diff"] == pytest.approx(1.0 / 14.439)
    assert rep.loc[("mnist", "abf", 0.1), "abs_diff"] == pytest.approx(0.0)
    assert rep.loc[("mnist", "iabf", 0.1), "paper"] == 13.251
    assert len(reproduction.paper_table1()) == 48
    md = reproduction.reproduction_markdown(rep.reset_index())
    assert "| mnist | 100 | necst | necst | 0.1 | 15.439 | 1 | 14.439 | +1.000 | +6.9% | yes |" in md
    assert "| mnist | 100 | 0.1 | paper | yes | yes |" in md   # 13.0 <= 13.369 <= 15.439, and the paper's
    flipped = pd.DataFrame([trial("necst", 0.1, 12.0), trial("abf", 0.1, 13.0), trial("iabf", 0.1, 14.0)])
    order = reproduction.ordering(entries.select_cells(flipped), "test")
    assert order.test_ordered.tolist() == [False]


def test_the_table_chooses_a_configuration_by_the_rule_the_study_chose_by():
    """A `confirm: false` study whose metric is the mutual information (mode max): the table's entry is the
    configuration the study's own rule (iabf.record.choose) picks, not the one of lowest validation distortion
    (what the table used to take, whatever the study said)."""
    rows = []
    for lam, val, mi in ((0.1, 9.0, 0.20), (0.01, 11.0, 0.35)):       # lam 0.1: lower distortion, less information
        for seed in (0, 1):
            rows.append({**trial("iabf", 0.1, val + seed, val=val + seed, seed=seed, lam=lam), "arm": "iabf",
                         "epochs": 5.0, f"metric.{M.VAL_MI}": mi + 0.01 * seed})
    runs = pd.DataFrame(rows)
    by_distortion = entries.select_cells(runs)
    by_information = entries.select_cells(runs, metric=M.VAL_MI, mode="max")
    assert by_distortion.config.tolist() == ["lam=0.1"] and by_information.config.tolist() == ["lam=0.01"]
    per_config = [{"uid": lam, "epoch": 5.0, "score": g[f"metric.{M.VAL_MI}"].mean()} for lam, g in runs.groupby("lam")]
    assert R.choose(per_config, "max")["uid"] == 0.01                   # the study's rule, on the same runs
    with pytest.raises(entries.TableError, match="no 'val/marginal_entropy' metric"):
        entries.select_cells(runs, metric=M.VAL_ENTROPY, mode="max")
