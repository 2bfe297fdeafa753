"""An ablation whose cells are not Table 1's, end to end: a real study (local Ray) with K and the
channel as cells, tracked by a real `mlflow server` serving its artifacts on loopback, then its
report read as a researcher would read it: one entry per cell and arm, never chosen on the seeds it
reports, contrasts within a cell."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from procs import free_port, start_server, stop_server

from analysis.fetch import fetch_runs, study_plan
from analysis.report import main as report_main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """4 cells (K 1, 2 x BSC, BEC) x NECST (nothing searched) and IABF (lambda searched on seed 9),
    confirmed on seeds 0 and 1: 8 search + 8 confirmation trials on digits, 2 epochs each."""
    tmp = tmp_path_factory.mktemp("ablation")
    port = free_port()
    server = start_server(tmp, port)
    uri = f"http://127.0.0.1:{port}"
    space = {"study": "kc", "dataset": "digits", "fixed": {"epochs": 2, "eps": 0.1}, "cells": ["dataset", "eps", "K", "channel"],
             "search": {"K": {"grid": [1, 2]}, "channel": {"grid": ["bsc", "bec"]}},
             "variants": [{"method": "necst"}, {"method": "iabf", "search": {"lam": {"grid": [0.1, 0.001]}}}],
             "seeds": [0, 1], "search_seeds": [9], "resources": {"cpu": 1}}
    (tmp / "kc.yaml").write_text(yaml.safe_dump(space))
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "ablation.py"), "--space", str(tmp / "kc.yaml"),
                          "--storage", str(tmp / "results"), "--tracking-uri", uri, "--chain-steps", "20"],
                         cwd=tmp, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert report_main(["--tracking-uri", uri, "--study", "kc", "--out", str(tmp / "report")]) == 0
        yield {"uri": uri, "out": out.stdout, "report": tmp / "report",
               "runs": fetch_runs(uri, "kc", include_unfinished=True), "plan": study_plan(uri, "kc")}
    finally:
        stop_server(server)


def test_every_cell_is_an_entry_of_its_own_with_all_its_seeds(ablation):
    table = pd.read_csv(ablation["report"] / "table1.csv")
    assert {"dataset", "eps", "K", "channel"} <= set(table.columns)
    for arm in ("necst", "iabf"):
        mine = table[table.arm == arm]
        assert sorted(zip(mine.K, mine.channel)) == [(1, "bec"), (1, "bsc"), (2, "bec"), (2, "bsc")]
        assert (mine.n == 2).all()
    # the console summary shows the same 8 entries, each with its K and channel
    summary = ablation["out"].split("test distortion:")[1].split("trial-epochs per cell")[0]
    assert sum(1 for line in summary.splitlines() if line.strip().startswith("digits")) == 8
    assert summary.splitlines()[1].split()[:4] == ["dataset", "eps", "K", "channel"]


def test_no_entry_is_chosen_on_the_seeds_it_reports(ablation):
    runs = ablation["runs"]
    confirm, search = runs[runs.phase == "confirm"], runs[runs.phase == "search"]
    table = pd.read_csv(ablation["report"] / "table1.csv")
    for row in table.itertuples():
        ids = row.run_ids.split()
        mine = confirm[confirm.run_id.isin(ids)]
        assert len(mine) == 2 and set(mine.seed) == {0, 1} and mine.config_hash.nunique() == 1
        assert (mine.K == row.K).all() and (mine.channel == row.channel).all()
        if row.arm == "iabf":   # lambda: the best by validation of this cell's own search trials, on seed 9
            own = search[(search.K == row.K) & (search.channel == row.channel) & (search.arm == "iabf")]
            assert len(own) == 2 and set(own.seed) == {9}
            assert row.lam == own.sort_values("val").lam.iloc[0]
            assert set(mine.confirms) == {own.sort_values("val").uid.iloc[0]}
    assert "chosen by validation distortion in a search on other seeds" in (ablation["report"] / "table1.md").read_text()


def test_contrasts_and_tally_stay_within_a_cell(ablation):
    con = pd.read_csv(ablation["report"] / "contrasts.csv")
    assert len(con) == 4 and set(zip(con.arm, con.against)) == {("iabf", "necst")}
    assert sorted(zip(con["cell.K"], con["cell.channel"])) == [(1, "bec"), (1, "bsc"), (2, "bec"), (2, "bsc")]
    table = pd.read_csv(ablation["report"] / "table1.csv").set_index(["K", "channel", "arm"])
    for _, c in con.iterrows():   # each difference is between the two arms of the contrast's own cell
        cell = (c["cell.K"], c["cell.channel"])
        assert c["diff"] == pytest.approx(table.loc[(*cell, "iabf"), "test"] - table.loc[(*cell, "necst"), "test"])
    tally = pd.read_csv(ablation["report"] / "tally.csv")
    assert tally.set_index(["arm", "against"]).loc[("iabf", "necst"), "cells"] == 4
    # each contrast Holm leaves undecided gets the seeds that would detect its difference (statsmodels' t-test
    # power at 0.05 / 4, from its own pooled spread): more than its 2, and what those seeds detect is no more
    # than the difference (analysis/sequential.py)
    from analysis.sequential import detectable

    power = pd.read_csv(ablation["report"] / "power.csv")
    undecided = con[~(con.p_holm < 0.05)]
    assert len(power) == len(undecided) > 0
    for r in power.itertuples():
        assert r.seeds_needed > 2 and detectable(int(r.seeds_needed), r.sd, 0.05 / 4) <= abs(r.diff) * (1 + 1e-6)
    assert "## Seeds an undecided contrast would need" in (ablation["report"] / "report.md").read_text()


def test_the_layout_and_figures_follow_the_cells(ablation):
    md = (ablation["report"] / "table1.md").read_text()
    # eps has one value, so the columns are K (the last axis that varies); a block per dataset and
    # channel; NECST and IABF rows in each
    lines = [line for line in md.splitlines() if line.startswith("| Digits")]
    assert lines == ["| Digits (8x8), channel=bec | K=1 | K=2 |", "| Digits (8x8), channel=bsc | K=1 | K=2 |"]
    assert md.count("| 16-bit NECST |") == 2 and md.count("| 16-bit IABF |") == 2
    tex = (ablation["report"] / "table1.tex").read_text()
    assert tex.count("\\textbf{") == 4          # the best arm of each cell (a column of one block)
    names = {p.name for p in ablation["report"].glob("*.png")}
    assert {"fig2_val_curves_digits_bsc.png", "fig2_val_curves_digits_bec.png", "axis_cell_K.png"} <= names
    # the reproduction compares nothing here: digits is not in the paper, and the BEC and K = 1 entries
    # are named as left out
    rep = (ablation["report"] / "reproduction.md").read_text()
    assert "not the BSC" in rep and "K is not 5" in rep


def test_the_plan_is_read_through_the_server_that_serves_the_artifacts(ablation):
    """MLflow's fluent artifact loader ignores the tracking URI it is not given; through the study's
    own client the plan comes back, and with it the report's full-grid column."""
    plan = ablation["plan"]
    assert plan is not None and plan["axes"] == ["dataset", "eps", "K", "channel"] and len(plan["cells"]) == 4
    report = (ablation["report"] / "report.md").read_text()
    cost = report.split("## Cost per cell")[1].split("##")[0]
    rows = [line for line in cost.splitlines() if line.startswith("| dataset=")]
    assert len(rows) == 4 and all("| -- |" not in line for line in rows), cost
