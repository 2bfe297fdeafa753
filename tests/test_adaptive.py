"""A study with an adaptive confirmation (`adaptive:`), run for real on digits: its looks as the seeds come in,
decided comparisons stopping their arms, a SIGKILLed driver resumed into the same sequence of looks, an edited
design refused on --resume, and the report replaying what was decided (analysis/sequential.py)."""
import re
from collections import Counter

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from runner import kill_driver, runs_of, space, study

from analysis.report import write_report


def adaptive_space(tmp_path, **adaptive):
    """NECST trained, ABF and IABF untrained (a learning rate of 1e-6: from the same initial weights per seed,
    nearly the same values, and far worse than NECST on every seed): the comparisons with NECST are decided
    early, ABF against IABF stays open to the maximum, so the study takes every look."""
    p = space(tmp_path, study="adapt", fixed={"epochs": 2, "K": 2, "eps": 0.1, "batch_size": 50},
              variants=[{"method": "necst", "lr": 0.01}, {"method": "abf", "lr": 1e-6},
                        {"method": "iabf", "lr": 1e-6, "lam": 0.01}],
              adaptive={"batch": 3, "max": 9, "permutations": 1000})
    d = yaml.safe_load(p.read_text())
    d.pop("seeds")
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.slow
def test_an_adaptive_confirmation_stops_decided_arms_and_a_killed_driver_resumes_the_same_looks(tmp_path):
    p = adaptive_space(tmp_path)
    plan = study(tmp_path, "--space", str(p), "--plan")
    assert plan.returncode == 0 and re.search(r"adaptive confirmation: 3 seeds per arm at each of up to 3 looks "
                                              r"\(9 at most\), 3 comparisons at family-wise alpha 0.05 \(AdaStop's test, "
                                              r"obrien-fleming spending\); the earliest decision at look 2 \(6 seeds\)",
                                              plan.stdout), plan.stdout

    proc = study(tmp_path, "--space", str(p), wait=False)
    seen = []
    for line in proc.stdout:                                   # the first look taken: the driver dies
        seen.append(line)
        if line.startswith("adaptive confirmation, look 1 of 3"):
            break
    assert re.search(r"[23] arm\(s\) get seeds 3-5", seen[-1]), "".join(seen[-20:])
    kill_driver(proc)

    edited = yaml.safe_load(p.read_text())
    edited["adaptive"]["max"] = 12
    p.write_text(yaml.safe_dump(edited))
    out = study(tmp_path, "--space", str(p), "--resume")
    assert out.returncode == 2 and "adaptive: " in out.stderr and '"max": 9' in out.stderr, out.stderr[-2000:]
    adaptive_space(tmp_path)                                   # restored

    out = study(tmp_path, "--space", str(p), "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    looks = re.findall(r"adaptive confirmation, look (\d) of 3 \((\d) seeds per arm\)", out.stdout)
    assert looks and looks[0][0] in ("1", "2") and looks[-1] == ("3", "9"), out.stdout[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = runs_of(client, "adapt")
    assert parent.info.status == "FINISHED"
    seeds = {}
    for arm, n in Counter((r.data.tags["arm"], r.data.tags["seed"]) for r in children).items():
        assert n == 1, arm                                     # no seed reported twice
        seeds.setdefault(arm[0], []).append(int(arm[1]))
    assert sorted(seeds["abf"]) == sorted(seeds["iabf"]) == list(range(9))   # open to the maximum

    write_report(f"sqlite:///{tmp_path / 'mlflow.db'}", "adapt", tmp_path / "report", quiet=True)
    frame = pd.read_csv(tmp_path / "report" / "adaptive.csv")
    decided = {(r.arm, r.against): (r.decision, r.look, r.seeds) for r in frame.itertuples()}
    look = decided[("abf", "necst")][1]
    assert decided[("abf", "necst")] == decided[("iabf", "necst")] == ("worse", look, 3 * look) and look < 3
    assert sorted(seeds["necst"]) == list(range(3 * look))   # decided against both: no batch after that look
    assert decided[("iabf", "abf")] == ("undecided", 3, 9)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## The adaptive confirmation" in report and "family-wise error over these 3 comparisons" in report
