"""The study protocol (studies/protocol.py): search inside each table cell, confirm on every seed.

Unit tests drive the searcher and the scheduler as Tune does, without a cluster; the end-to-end
tests run real studies on a real local Ray with a real MLflow store."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from iabf import metrics as M
from iabf.record import choose
from iabf.train import load_models
from studies.plan import groups, plan
from studies.protocol import GroupASHA, StudySearcher
from studies.validation import validate

ROOT = Path(__file__).resolve().parents[1]


def study_of(**over):
    d = {"study": "t", "dataset": "digits", "fixed": {"epochs": 4, "K": 2}, "search": {"eps": {"grid": [0.1, 0.3]}},
         "variants": [{"method": "necst"}, {"method": "iabf", "search": {"lam": {"grid": [0.1, 0.01, 0.001]}}}],
         "seeds": [0, 1, 2], **over}
    return validate(d, "space.yaml")


def drain(searcher, finish=lambda config: {M.EPOCH: 4, M.BEST_VAL_DISTORTION: config.get("lam", 1.0)}):
    """Run a searcher as Tune would, every trial finishing at once: the configs it suggested, in order."""
    suggested, n = [], 0
    while True:
        config = searcher.suggest(f"t{n}")
        if config is Searcher.FINISHED:
            return suggested
        assert config is not None, "nothing running, yet the searcher waits"
        suggested.append(config)
        searcher.on_trial_complete(f"t{n}", {**finish(config)})
        n += 1


def test_groups_are_cells_by_arms_and_a_single_configuration_is_not_searched():
    s = study_of()
    assert [(g.cell["eps"], g.arm) for g in groups(s)] == [(0.1, "necst"), (0.1, "iabf"), (0.3, "necst"), (0.3, "iabf")]
    assert plan(s) == {"search_trials": 6, "search_epochs": 24, "confirm_trials": 4, "confirm_epochs": 48,
                       "full_grid_epochs": 2 * 4 * 3 * 4, "runs": 6 * 1 + 4 * 3, "trials": 10}
    configs = drain(StudySearcher(s))
    search = [c for c in configs if c["phase"] == "search"]
    confirm = [c for c in configs if c["phase"] == "confirm"]
    assert len(search) == 6 and all(c["arm"] == "iabf" and c["seed"] == 3 and c["stack"] == 1 for c in search)
    assert len(confirm) == 4 and all(c["seed"] == 0 and c["stack"] == 3 for c in confirm)   # 3 seeds, stacked
    # IABF's lambda chosen per cell by the best validation (here: the smallest lambda), confirmed
    iabf = [c for c in confirm if c["arm"] == "iabf"]
    assert [c["lam"] for c in iabf] == [0.001, 0.001] and {c["cell"] for c in iabf} == {"digits/bsc/16b/eps0.1",
                                                                                        "digits/bsc/16b/eps0.3"}
    by_uid = {c["uid"]: c for c in search}
    assert all(by_uid[c["confirms"]]["lam"] == c["lam"] and by_uid[c["confirms"]]["cell"] == c["cell"] for c in iabf)
    assert all(c["confirms"] == "" for c in confirm if c["arm"] == "necst")
    assert len({c["uid"] for c in configs}) == len(configs)
    assert [c["uid"] for c in drain(StudySearcher(s))] == [c["uid"] for c in configs]   # fixed by what a trial is


def test_a_confirmation_waits_for_its_groups_search_and_is_never_a_search_seed():
    s = study_of(seeds=[0, 1], stack=1)
    searcher = StudySearcher(s)
    first = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [c["phase"] for c in first] == ["search"] * 6     # the search first: it gates the confirmations
    nxt = searcher.suggest("t6")
    assert nxt["phase"] == "confirm" and nxt["arm"] == "necst"   # nothing to search there
    searcher.on_trial_complete("t6", {})
    while searcher.suggest("tx") is not None:             # the necst confirmations; then IABF must wait
        searcher.on_trial_complete("tx", {})
    for i, c in enumerate(first):
        searcher.on_trial_complete(f"t{i}", {M.EPOCH: 4 if c["lam"] != 0.1 else 1,   # 0.1: stopped by ASHA
                                            M.BEST_VAL_DISTORTION: {0.1: 0.5, 0.01: 2.0, 0.001: 3.0}[c["lam"]]})
    rest = drain(searcher)
    assert {(c["cell"], c["lam"], c["seed"]) for c in rest} == {(cell, 0.01, seed) for cell in ("digits/bsc/16b/eps0.1",
                                                                                               "digits/bsc/16b/eps0.3")
                                                                for seed in (0, 1)}
    # lambda 0.1 had the best score, but only at epoch 1: the choice is among the trials that went furthest
    assert choose([{"uid": "a", "epoch": 1, "score": 0.5, "params": {}},
                   {"uid": "b", "epoch": 4, "score": 2.0, "params": {}}], "min")["uid"] == "b"


def test_a_group_whose_search_failed_has_nothing_to_confirm_and_the_study_still_ends():
    s = study_of(search={"eps": {"grid": [0.1]}})
    configs = drain(StudySearcher(s), finish=lambda c: {M.EPOCH: 1, "failure": "diverged"} if "lam" in c else {})
    assert [c["arm"] for c in configs if c["phase"] == "confirm"] == ["necst"]


def optuna_study(seed_cells=(0.1, 0.3)):
    return study_of(searcher="optuna", num_samples=12, search={"eps": {"grid": list(seed_cells)}},
                    variants=[{"method": "iabf", "search": {"lam": {"loguniform": [1e-4, 1.0]}}}])


def test_each_cells_optuna_search_is_its_own_and_repeats_itself():
    """Two cells, one TPE each: what one cell learns never moves the other's suggestions, and the
    same study suggests the same points."""
    def suggestions(results_for_first_cell):
        searcher, out = StudySearcher(optuna_study()), {}
        for n in range(24):
            c = searcher.suggest(f"t{n}")
            out.setdefault(c["cell"], []).append(round(c["lam"], 12))
            score = results_for_first_cell(c["lam"]) if c["cell"].endswith("eps0.1") else c["lam"]
            searcher.on_trial_complete(f"t{n}", {M.EPOCH: 4, M.BEST_VAL_DISTORTION: score, M.VAL_DISTORTION: score})
        return out

    a = suggestions(lambda lam: lam)          # in the first cell small lambdas win ...
    b = suggestions(lambda lam: -lam)         # ... or large ones
    assert a["digits/bsc/16b/eps0.3"] == b["digits/bsc/16b/eps0.3"]      # the other cell: untouched
    assert a["digits/bsc/16b/eps0.1"] != b["digits/bsc/16b/eps0.1"]      # its own cell: TPE followed the results
    assert suggestions(lambda lam: lam) == a                           # same seed, same suggestions
    assert a["digits/bsc/16b/eps0.1"][0] != a["digits/bsc/16b/eps0.3"][0]   # each cell has its own seed


def trial(tid, eps, lam):
    return SimpleNamespace(trial_id=tid, config={"phase": "search", "cell": f"digits/bsc/16b/eps{eps}", "arm": "iabf",
                                                 "lam": lam})


def test_asha_per_cell_keeps_the_noisy_cells_best_where_one_study_wide_asha_stops_them_all():
    """Distortion at eps 0.4 is worse than at eps 0.0 for every lambda. One ASHA over the whole
    study stops every eps-0.4 trial at its first rung; one per cell keeps each cell's best."""
    trials = [trial(f"{eps}-{lam}", eps, lam) for lam in (0.1, 0.01, 0.001) for eps in (0.0, 0.4)]
    value = {0.0: 3.0, 0.4: 9.0}

    def survivors(scheduler):
        for t in trials:
            scheduler.on_trial_add(None, t)
        kept = []
        for t in trials:     # each trial reaches the first rung (epoch 1) in turn
            eps, lam = float(t.trial_id.split("-")[0]), float(t.trial_id.split("-")[1])
            result = {M.EPOCH: 1, M.VAL_DISTORTION: value[eps] + lam}
            if scheduler.on_trial_result(None, t, result) == TrialScheduler.CONTINUE:
                kept.append(t.trial_id)
        return kept

    wide = survivors(ASHAScheduler(time_attr=M.EPOCH, metric=M.VAL_DISTORTION, mode="min", max_t=4, grace_period=1,
                                   reduction_factor=3))
    per_cell = survivors(GroupASHA(M.VAL_DISTORTION, "min", max_t=4, grace_period=1, reduction_factor=3))
    assert not any(t.startswith("0.4") for t in wide)
    assert {t.split("-")[0] for t in per_cell} == {"0.0", "0.4"}
    confirm = SimpleNamespace(trial_id="c", config={"phase": "confirm", "cell": "x", "arm": "iabf"})
    g = GroupASHA(M.VAL_DISTORTION, "min", max_t=4, grace_period=1, reduction_factor=3)
    g.on_trial_add(None, confirm)
    assert g.on_trial_result(None, confirm, {M.EPOCH: 1, M.VAL_DISTORTION: 1e9}) == TrialScheduler.CONTINUE


def test_a_groups_asha_ends_at_its_datasets_epochs():
    """With budgets per dataset (by_dataset), a group whose trials train 4 epochs gets an ASHA whose
    max_t is 4, not the study's 10: its rungs lie inside the training it will do."""
    g = GroupASHA(M.VAL_DISTORTION, "min", max_t=10, grace_period=5, reduction_factor=3)
    short = SimpleNamespace(trial_id="s", config={"phase": "search", "cell": "a", "arm": "iabf", "epochs": 4})
    long = SimpleNamespace(trial_id="l", config={"phase": "search", "cell": "b", "arm": "iabf", "epochs": 20})
    g.on_trial_add(None, short), g.on_trial_add(None, long)
    assert g.by_group["a | iabf"]._max_t == 4 and g.by_group["b | iabf"]._max_t == 10
    # a trial at its last epoch is at max_t: ASHA lets it complete
    assert g.on_trial_result(None, short, {M.EPOCH: 4, M.VAL_DISTORTION: 1.0}) == TrialScheduler.STOP


def test_asha_records_are_rebuilt_on_resume_so_it_stops_the_same_trials(tmp_path):
    """Six trials of one group, one after another (rungs at epochs 1, 2, 4). Uninterrupted, ASHA
    stops some. Interrupted after three (the third between two rungs), the scheduler is built anew
    and every trial added again, as Tune does on a resume: rebuilt from the finished trials' state
    files and the resumed one's replayed epochs, it stops exactly the same trials; without the
    state files (the old behaviour) it does not."""
    from iabf.record import REPLAYED
    from iabf.tune import TrialState

    curves = {f"t{i}": [10 - i % 3 + 0.5 * i - 0.3 * e * (i % 2) for e in range(1, 7)] for i in range(6)}
    asha = dict(max_t=6, grace_period=1, reduction_factor=2)

    def trial(tid, status="PENDING"):
        return SimpleNamespace(trial_id=tid, status=status, config={"phase": "search", "cell": "c", "arm": "a",
                                                                    "uid": tid, "epochs": 6})

    def run(scheduler, tid, epochs, replayed=()):
        """Feed a trial's epochs; the epoch it is stopped at, or None."""
        t = trial(tid)
        for e in replayed:
            scheduler.on_trial_result(None, t, {M.EPOCH: e, M.VAL_DISTORTION: curves[tid][e - 1], REPLAYED: True})
        for e in epochs:
            if scheduler.on_trial_result(None, t, {M.EPOCH: e, M.VAL_DISTORTION: curves[tid][e - 1]}) == \
                    TrialScheduler.STOP and e < 6:
                return e
        return None

    live = GroupASHA(M.VAL_DISTORTION, "min", **asha)
    uninterrupted = {}
    for tid in curves:
        live.on_trial_add(None, trial(tid))
        uninterrupted[tid] = run(live, tid, range(1, 7))

    def resumed(state_root):
        before = GroupASHA(M.VAL_DISTORTION, "min", str(tmp_path / "state"), **asha)
        stopped = {}
        for tid in ("t0", "t1"):
            before.on_trial_add(None, trial(tid))
            stopped[tid] = run(before, tid, range(1, 7))
            last = stopped[tid] or 6                  # each trial's own state file: its epochs so far
            TrialState(str(tmp_path / "state"), tid).save([], [{M.EPOCH: e, M.VAL_DISTORTION: curves[tid][e - 1]}
                                                                for e in range(1, last + 1)])
        before.on_trial_add(None, trial("t2"))
        assert run(before, "t2", [1, 2, 3]) is None   # interrupted at epoch 3, between the rungs at 2 and 4
        after = GroupASHA(M.VAL_DISTORTION, "min", state_root, **asha)
        for tid in ("t0", "t1"):
            after.on_trial_add(None, trial(tid, "TERMINATED"))
        after.on_trial_add(None, trial("t2"))
        stopped["t2"] = run(after, "t2", [4, 5, 6], replayed=[1, 2, 3])
        for tid in ("t3", "t4", "t5"):
            after.on_trial_add(None, trial(tid))
            stopped[tid] = run(after, tid, range(1, 7))
        return stopped

    assert any(uninterrupted[t] for t in ("t3", "t4", "t5"))       # the records matter after the resume
    assert resumed(str(tmp_path / "state")) == uninterrupted
    assert resumed(None) != uninterrupted                           # without the records, ASHA forgets


# --- end to end: real Ray, real MLflow -----------------------------------------------------------------

def run_study(tmp_path, space, *args):
    return subprocess.run([sys.executable, str(ROOT / "studies" / "ablation.py"), "--storage", str(tmp_path / "results"),
                           "--chain-steps", "20", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                           "--space", str(space), *args],
                          cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_study_over_two_noise_levels_keeps_each_cells_best_and_confirms_every_seed(tmp_path):
    space = tmp_path / "two_eps.yaml"
    space.write_text(yaml.safe_dump({
        "study": "two_eps", "dataset": "digits", "fixed": {"epochs": 3, "K": 2, "max_train_examples": 400},
        "search": {"eps": {"grid": [0.0, 0.4]}},
        "variants": [{"method": "iabf", "search": {"lam": {"grid": [0.1, 0.01, 0.001]}}}],
        "seeds": [0, 1], "max_concurrent": 1,
        "scheduler": {"name": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 3}}))
    out = run_study(tmp_path, space)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("two_eps")
    children = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
    search = [r for r in children if r.data.tags["phase"] == "search"]
    assert len(search) == 6
    first_rung = {r.info.run_id: next(m.value for m in client.get_metric_history(r.info.run_id, M.VAL_DISTORTION)
                                      if m.step == 1) for r in search}
    cells = {eps: [r for r in search if r.data.params["eps"] == eps] for eps in ("0.0", "0.4")}
    # one study-wide ASHA would have stopped every eps-0.4 trial at epoch 1: each is worse than every eps-0.0 one
    assert max(first_rung[r.info.run_id] for r in cells["0.0"]) < min(first_rung[r.info.run_id] for r in cells["0.4"])
    for eps, runs in cells.items():   # ... while each cell's own ASHA lets its best finish
        assert any(r.data.tags["stop_reason"] == "completed" for r in runs), eps
    table = pd.read_csv(next((tmp_path / "results").glob("two_eps-*/report")) / "table1.csv")
    assert sorted(table.eps) == [0.0, 0.4] and (table.n == 2).all()    # both cells, n = len(seeds) = 2

    # the best runs, from MLflow: the confirmation runs and checkpoints that load
    found = subprocess.run([sys.executable, "-m", "analysis.best", "--study", "two_eps", "--json",
                            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    best = json.loads(found.stdout)
    assert best["confirmed"] and len(best["entries"]) == 2
    for entry in best["entries"]:
        assert entry["n"] == 2 and entry["arm"] == "iabf" and entry["config"].startswith("lam=")
        assert Counter(r["seed"] for r in entry["runs"]) == {0: 1, 1: 1}
        import mlflow

        path = mlflow.artifacts.download_artifacts(entry["runs"][0]["checkpoint"], dst_path=str(tmp_path / "dl"),
                                                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        cfg, _, _ = load_models(path)
        assert cfg.eps == entry["eps"] and cfg.lam == entry["params"]["lam"]
    assert "trial-epochs per cell" in out.stdout


@pytest.mark.slow
def test_the_cpu_table1_runs_under_smoke_with_its_budget_per_dataset(tmp_path, data_dir):
    out = run_study(tmp_path, ROOT / "search_spaces" / "table1_cpu.yaml", "--smoke", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 trials: 2 search, 1 confirmation" in out.stdout and "3 completed" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("table1_cpu-smoke")
    runs = client.search_runs([exp.experiment_id], "tags.phase = 'confirm'")
    # the smoke's tiny budget wins over by_dataset's; by_dataset's other values (val_subset) stay
    assert runs and all(r.data.params["epochs"] == "2" and r.data.params["val_subset"] == "2000" for r in runs)


@pytest.mark.slow
def test_the_missions_ablation_validates_and_runs_under_smoke(tmp_path, data_dir):
    out = run_study(tmp_path, ROOT / "search_spaces" / "ablation.yaml", "--smoke", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 trials: 2 search, 1 confirmation" in out.stdout and "3 completed" in out.stdout


def test_optunas_own_lines_go_to_the_study_log_not_the_console(tmp_path):
    """Optuna gives its logger a console handler of its own when first imported: a study prints no
    `A new study created in memory` per group (176 lines for table1.yaml); its log file keeps them."""
    code = ("import sys; from studies import console; held = console.capture_logs(); import optuna; "
            "optuna.create_study(); console.to_file(held, sys.argv[1]); optuna.create_study()")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "A new study" not in out.stderr + out.stdout
    assert (tmp_path / "study.log").read_text().count("A new study created in memory") == 2
