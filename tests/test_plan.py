"""`studies/ablation.py --plan` on every shipped study: what it will run, counted, in a fraction of a
second, without Ray, torch or MLflow, and nothing written; `--estimate` times the models on real data."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from studies.plan import plan
from studies.validation import load_study

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
PROBE = ("import runpy, sys\n"
         "sys.argv = ['ablation.py', *sys.argv[1:]]\n"
         "try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code\n"
         "print('EXIT', code, 'LOADED', sorted(m for m in ('ray', 'torch', 'mlflow') if m in sys.modules))\n")


def probe(tmp_path, *args):
    code = PROBE.format(script=str(ROOT / "studies" / "ablation.py"))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("space", SPACES, ids=[p.stem for p in SPACES])
def test_plan_counts_every_shipped_study_without_starting_anything(tmp_path, space):
    out = probe(tmp_path, "--space", str(space), "--plan")
    assert out.stdout.strip().splitlines()[-1] == "EXIT 0 LOADED []", out.stdout[-2000:] + out.stderr[-2000:]
    counts = plan(load_study(space))
    line = next(line for line in out.stdout.splitlines() if line.startswith("trials:"))
    assert re.match(rf"trials: {counts['search_trials']} search .* \+ {counts['confirm_trials']} confirmation .* = "
                    rf"{counts['trials']}\b", line), line
    assert f"{counts['full_grid_epochs']:,}" in out.stdout and "resources:" in out.stdout
    assert list(tmp_path.iterdir()) == [] and not out.stderr   # no store, no results folder, no Ray session


def test_a_bad_space_is_refused_by_plan_as_by_a_run(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: s\nsearch: {K: {grid: []}}\n")
    out = probe(tmp_path, "--space", str(bad), "--plan")
    assert "EXIT 2" in out.stdout and out.stderr.strip().count("\n") == 0 and "non-empty list" in out.stderr


@pytest.mark.slow
def test_estimate_times_each_model_on_real_data_and_prices_the_plan(tmp_path):
    out = probe(tmp_path, "--space", str(ROOT / "search_spaces" / "quick.yaml"), "--plan", "--estimate",
                "--data-dir", str(tmp_path / "data"))
    assert "EXIT 0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    timed = [line for line in out.stdout.splitlines() if line.strip().startswith("timed digits")]
    # quick.yaml trains NECST and ABF stacked 3 seeds, IABF on one search seed and on a stack of 3
    assert len(timed) == 4 and all(float(re.search(r"([\d,]+) training images/s", t).group(1).replace(",", "")) > 0
                                   for t in timed)
    hours, minutes, slots = re.search(r"expected: ([\d.]+) trial-hours for 12 trials .* about (\d+) min wall with (\d+) "
                                      r"at once", out.stdout).groups()
    assert float(hours) > 0 and int(slots) >= 1
    assert not any(p.name in ("mlflow.db", "results", "mlruns") for p in tmp_path.iterdir())


def test_plan_says_how_trials_fill_each_node_type_of_a_cluster_file(tmp_path):
    from studies.estimate import CLUSTER_YAML, node_fit

    shipped = node_fit(load_study(ROOT / "search_spaces" / "table1.yaml").resources, CLUSTER_YAML)
    assert shipped == ["on cluster.yaml's node types: head (m5.xlarge: 0 CPUs, 0 GPUs): no trial; gpu (g5.xlarge: "
                       "4 CPUs, 1 GPUs): 4 trials per node, 4 per GPU"]          # every GPU full
    two_cpus = node_fit({"cpu": 2, "gpu": 0.25}, CLUSTER_YAML)                      # what table1.yaml asked before
    assert two_cpus[0].endswith("2 trials per node, 2 per GPU (leaves 50% of its GPUs idle: 2 CPUs a trial is the limit)")
    never = node_fit({"cpu": 1, "gpu": 2}, CLUSTER_YAML)
    assert never[-1].startswith("warning: no node type of cluster.yaml can run a trial of 1 CPUs and 2 GPUs")
    assert node_fit({"cpu": 1, "gpu": 0}, tmp_path / "none.yaml") == []             # no cluster file: nothing said
