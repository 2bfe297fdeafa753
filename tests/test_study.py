"""studies/ablation.py end to end: a real local Ray runs real trials, a real MLflow store records
them (sqlite, and a real `mlflow server` on 127.0.0.1), and the test reads MLflow back."""
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from procs import free_port, start_server, stop_server
import yaml
from mlflow.tracking import MlflowClient

from iabf import metrics as M
from iabf.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "studies" / "ablation.py"
pytestmark = pytest.mark.slow


def study(tmp_path, *args, uri=None, wait=True):
    cmd = [sys.executable, str(SCRIPT), "--storage", str(tmp_path / "results"), "--chain-steps", "20",
           "--tracking-uri", uri or f"sqlite:///{tmp_path / 'mlflow.db'}", *args]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def runs_of(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "trial_id" not in r.data.tags]
    children = [r for r in runs if "trial_id" in r.data.tags]
    return parents, children


def space(tmp_path, **over):
    d = {"study": "t", "dataset": "digits", "fixed": {"epochs": 3, "K": 2}, "seeds": [0],
         "resources": {"cpu": 1}, **over}
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_smoke_study_tracks_parent_child_params_metrics_artifacts(tmp_path):
    """quick.yaml --smoke: one cell, IABF's lambda searched (2 trials), then the choice confirmed."""
    out = study(tmp_path, "--smoke")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.splitlines()[0].startswith("started a local Ray with")
    assert "3 trials: 2 search, 1 confirmation" in out.stdout
    assert "the configuration chosen per cell and arm by validation (confirmed on every seed)" in out.stdout
    assert "mlflow ui --backend-store-uri" in out.stdout
    # the link opens the study's runs (MLflow 3.17's UI otherwise opens its GenAI overview)
    assert "http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = runs_of(client, "quick-smoke")
    assert len(children) == 3 and parent.info.status == "FINISHED"
    # declared as model training, so MLflow's UI opens on the runs, not on its GenAI overview
    assert client.get_experiment_by_name("quick-smoke").tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.metrics["study/completed"] == 3
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"space.yaml", "plan.json", "report"}
    assert "table1.tex" in {a.path.split("/")[-1] for a in client.list_artifacts(parent.info.run_id, "report")}
    report = next((tmp_path / "results").glob("quick-smoke-*/report"))
    assert "\\begin{tabular}" in (report / "table1.tex").read_text()
    assert (report / "fig3_markov_chain_digits.png").stat().st_size > 1000
    search = [r for r in children if r.data.tags["phase"] == "search"]
    (confirm,) = [r for r in children if r.data.tags["phase"] == "confirm"]
    assert sorted(r.data.params["lam"] for r in search) == ["0.01", "0.1"]
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["cell"] == "digits/bsc/16b/eps0.1"
        assert tags["study"] == "quick-smoke" and tags["stop_reason"] == "completed" and tags["arm"] == "iabf"
        assert len(tags["config_hash"]) == 12 and tags["git_commit"] and tags["uid"]
        assert run.info.status == "FINISHED"
        assert params["dataset"] == "digits" and params["epochs"] == "2" and params["method"] == "iabf"
        history = client.get_metric_history(run.info.run_id, M.VAL_DISTORTION)
        assert sorted(m.step for m in history) == [1, 2]                  # step = epoch, once each
        assert M.TEST_DISTORTION in run.data.metrics
    # the search runs on a seed the table does not report; the confirmation names the trial it confirms
    assert {r.data.tags["seed"] for r in search} == {"3"} and confirm.data.tags["seed"] == "0"
    best = min(search, key=lambda r: r.data.metrics[M.BEST_VAL_DISTORTION])
    assert confirm.data.tags["confirms"] == best.data.tags["uid"] and confirm.data.params["lam"] == best.data.params["lam"]
    assert confirm.info.run_name == f"digits-iabf-eps0.1-lam{best.data.params['lam']}-K5-s0"
    assert {a.path for a in client.list_artifacts(confirm.info.run_id)} == {
        "checkpoint.pt", "config.json", "reconstructions.png", "markov_chain.png"}
    for run in search:   # a means to a choice: its checkpoint, no samples drawn
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"checkpoint.pt"}
        assert run.info.run_name.endswith("-s3-search")
    # the status table, its columns, and nothing of Ray's own chatter on the console
    assert "lam" in out.stdout and "phase" in out.stdout and "Trial status" not in out.stdout
    assert len(out.stdout.splitlines()) < 80
    assert (next((tmp_path / "results").glob("quick-smoke-*")) / "study.log").stat().st_size > 0


def test_stacked_study_gives_every_seed_its_own_run(tmp_path):
    """2 trials of 2 stacked seeds each: 4 child runs, one per seed, each like a separate trial's."""
    p = space(tmp_path, study="stacked", fixed={"epochs": 2, "K": 2, "method": "iabf"}, seeds=[0, 1, 2, 3], stack=2)
    out = study(tmp_path, "--space", str(p))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 trials: 0 search, 2 confirmation" in out.stdout       # nothing to search: confirmed at once
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = runs_of(client, "stacked")
    assert sorted(int(r.data.tags["seed"]) for r in children) == [0, 1, 2, 3]
    assert sorted(Counter(r.data.tags["trial_id"] for r in children).values()) == [2, 2]   # 2 trials, 2 seeds each
    assert len({r.data.tags["config_hash"] for r in children}) == 1        # one configuration, four seeds
    assert parent.data.metrics["study/completed"] == 4
    for run in children:
        seed = run.data.tags["seed"]
        assert run.data.params["seed"] == seed and run.data.params["stack"] == "2"
        assert run.info.run_name.endswith(f"-s{seed}") and run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, M.VAL_DISTORTION)) == [1, 2]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
            "checkpoint.pt", "config.json", "reconstructions.png", "markov_chain.png"}
        ckpt = load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoint.pt", str(tmp_path)))
        assert ckpt["config"]["seed"] == int(seed)
    assert len({r.data.metrics[M.TEST_DISTORTION] for r in children}) == 4
    table = (next((tmp_path / "results").glob("stacked-*/report")) / "table1.csv").read_text()
    assert ",4," in table                                                   # n = 4 seeds in the cell


def test_asha_stops_weak_trials_early_and_tracking_says_so(tmp_path):
    """ASHA inside the search: lr 1e-5 barely moves in 4 epochs and is stopped (one trial at a time,
    so the order is fixed); the confirmation trains the winner on both seeds, never stopped."""
    p = space(tmp_path, study="asha", fixed={"epochs": 4, "K": 2, "method": "necst"},
              search={"lr": {"grid": [0.003, 0.00001]}}, seeds=[0, 1], max_concurrent=1,
              scheduler={"name": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2})
    out = study(tmp_path, "--space", str(p))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"trial \w+ \(.*lr=1e-05.*phase=search.*\): stopped by ASHA after epoch \d", out.stdout), out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = runs_of(client, "asha")
    search = [r for r in children if r.data.tags["phase"] == "search"]
    confirm = [r for r in children if r.data.tags["phase"] == "confirm"]
    reasons = Counter(r.data.tags["stop_reason"] for r in search)
    assert len(search) == 2 and reasons == {"early_stopped": 1, "completed": 1}
    for r in search:
        epochs = len(client.get_metric_history(r.info.run_id, M.EPOCH))
        if r.data.tags["stop_reason"] == "early_stopped":
            assert r.data.params["lr"] == "1e-05"
            assert r.info.status == "KILLED" and epochs < 4 and M.TEST_DISTORTION not in r.data.metrics
            assert not client.list_artifacts(r.info.run_id)
        else:
            assert r.info.status == "FINISHED" and epochs == 4
            winner = r
    assert sorted(r.data.tags["seed"] for r in confirm) == ["0", "1"]   # both seeds, one stacked trial
    for r in confirm:
        assert r.data.tags["stop_reason"] == "completed" and r.data.params["lr"] == "0.003"
        assert r.data.tags["confirms"] == winner.data.tags["uid"]
    assert parent.data.metrics["study/early_stopped"] == 1


def wait_for(client, name: str, done, timeout: float = 300) -> None:
    """Poll MLflow until done(child runs) holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            _, children = runs_of(client, name)
        except Exception:
            continue
        if done(children):
            return
    pytest.fail(f"study {name}: condition not reached in {timeout} s")


def completed(runs, phase=None):
    return [r for r in runs if r.data.tags.get("stop_reason") == "completed" and phase in (None, r.data.tags["phase"])]


def test_interrupted_then_killed_in_the_confirmation_study_resumes_without_duplicate_runs(tmp_path):
    """Ctrl-C during the search, --resume, SIGKILL of the driver during the confirmation phase,
    --resume again: the study completes with one MLflow run per trial and seed, every epoch once,
    none left RUNNING, and finished trials not rerun."""
    p = space(tmp_path, study="resume", fixed={"epochs": 8, "K": 2, "method": "necst"},
              search={"lr": {"grid": [0.001, 0.002, 0.003]}}, seeds=[0, 1], stack=1, max_concurrent=1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    proc = study(tmp_path, "--space", str(p), wait=False)
    wait_for(client, "resume", lambda runs: len(completed(runs)) >= 1 and len(runs) > 1)
    proc.send_signal(signal.SIGINT)                                   # 1. a clean interrupt, mid-search
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in first, first[-3000:]
    _, before = runs_of(client, "resume")
    assert all(r.info.status != "RUNNING" for r in before)          # nothing left RUNNING
    done = {r.data.tags["uid"]: r.info.run_id for r in before if r.data.tags.get("stop_reason")}

    proc = study(tmp_path, "--space", str(p), "--resume", wait=False)
    # the confirmation phase: a confirmation run has logged an epoch
    wait_for(client, "resume", lambda runs: any(r.data.tags["phase"] == "confirm" and M.EPOCH in r.data.metrics
                                                for r in runs))
    proc.kill()                                                       # 2. the driver dies: SIGKILL
    proc.communicate(timeout=60)
    time.sleep(3)                                                     # its local Ray goes down with it

    out = study(tmp_path, "--space", str(p), "--resume")              # 3. finish the study
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (parent,), children = runs_of(client, "resume")
    assert parent.info.status == "FINISHED"
    keys = Counter((r.data.tags["uid"], r.data.tags["seed"]) for r in children)
    assert len(keys) == 5 and set(keys.values()) == {1}                 # 3 search + 2 confirmation, no duplicate
    assert Counter(r.data.tags["phase"] for r in children) == {"search": 3, "confirm": 2}
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["stop_reason"] == "completed"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)]
        assert sorted(steps) == list(range(1, 9))                      # every epoch once: none doubled
    for uid, run_id in done.items():                                   # finished trials kept their runs
        assert next(r for r in children if r.data.tags["uid"] == uid).info.run_id == run_id
    confirmed = {r.data.tags["confirms"] for r in children if r.data.tags["phase"] == "confirm"}
    assert len(confirmed) == 1 and confirmed <= {r.data.tags["uid"] for r in children}


def test_sigterm_stops_a_study_like_ctrl_c_and_resume_finishes_it_past_a_damaged_state_file(tmp_path):
    """What a scheduler, `kill`, `docker stop` or a spot reclaim sends: a clean stop with the
    --resume command (not Ray's native abort). The unfinished trial's state file is then truncated:
    --resume names it, sets it aside and trains that trial again from its start, in the same MLflow
    run, every epoch logged once."""
    p = space(tmp_path, study="term", fixed={"epochs": 6, "K": 2, "method": "necst"},
              search={"lr": {"grid": [0.001, 0.002]}}, seeds=[0], stack=1, max_concurrent=1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = study(tmp_path, "--space", str(p), wait=False)
    wait_for(client, "term", lambda runs: len(completed(runs)) >= 1 and any(
        not r.data.tags.get("stop_reason") and r.data.metrics.get(M.EPOCH, 0) >= 2 for r in runs))
    proc.send_signal(signal.SIGTERM)
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in first, first[-3000:]
    assert "Traceback" not in first and "Aborted" not in first and "SIGTERM received" not in first
    _, before = runs_of(client, "term")
    assert all(r.info.status != "RUNNING" for r in before)
    unfinished = next(r for r in before if not r.data.tags.get("stop_reason"))
    state = next((tmp_path / "results").glob(f"term-*/state/{unfinished.data.tags['uid']}.pt"))
    state.write_bytes(state.read_bytes()[:100])                       # damage from outside: truncated
    out = study(tmp_path, "--space", str(p), "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    said = [line for line in (out.stdout + out.stderr).splitlines() if "could not be read" in line]
    assert said and str(state) in said[0] and "trains again from its first epoch" in said[0], out.stderr[-2000:]
    assert state.with_name(state.name + ".damaged").exists()
    (parent,), children = runs_of(client, "term")
    assert parent.info.status == "FINISHED" and len(children) == 3     # 2 search + 1 confirmation
    assert all(r.data.tags["stop_reason"] == "completed" for r in children)
    again = next(r for r in children if r.info.run_id == unfinished.info.run_id)   # the same run continued
    assert "could not be read" in again.data.tags["state_reset"]
    assert sorted(m.step for m in client.get_metric_history(again.info.run_id, M.EPOCH)) == list(range(1, 7))


@pytest.mark.slow
def test_a_search_interrupted_between_rungs_stops_the_same_trials_as_an_uninterrupted_one(tmp_path):
    """One search group of 6 configurations run one at a time (deterministic order and curves),
    ASHA rungs at epochs 1, 2, 4: interrupted mid-search (Ctrl-C) and resumed, ASHA stops exactly
    the trials it stops in the same study run without interruption."""
    spec = dict(study="rungs", fixed={"epochs": 6, "K": 2, "method": "necst"}, confirm=False,
                search={"lr": {"grid": [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016]}}, max_concurrent=1,
                scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})

    def stopped(folder: Path) -> dict:
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        _, children = runs_of(client, "rungs")
        assert len(children) == 6 and all(r.data.tags["stop_reason"] in ("completed", "early_stopped") for r in children)
        return {r.data.params["lr"]: int(r.data.metrics[M.EPOCH]) for r in children
                if r.data.tags["stop_reason"] == "early_stopped"}

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    out = study(tmp_path / "a", "--space", str(space(tmp_path / "a", **spec)))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    uninterrupted = stopped(tmp_path / "a")

    b = tmp_path / "b"
    client = MlflowClient(f"sqlite:///{b / 'mlflow.db'}")
    proc = study(b, "--space", str(space(b, **spec)), wait=False)
    # two trials ended and a third under way: ASHA has records to lose
    wait_for(client, "rungs", lambda runs: len([r for r in runs if r.data.tags.get("stop_reason")]) >= 2 and
             any(not r.data.tags.get("stop_reason") and M.EPOCH in r.data.metrics for r in runs))
    proc.send_signal(signal.SIGINT)
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, first[-3000:]
    _, before = runs_of(client, "rungs")
    assert 2 <= len([r for r in before if r.data.tags.get("stop_reason") in ("completed", "early_stopped")]) < 6
    out = study(b, "--space", str(space(b, **spec)), "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    resumed = stopped(b)
    print(f"stopped (lr: epoch) uninterrupted {uninterrupted}, resumed {resumed}")
    assert resumed == uninterrupted and uninterrupted        # the same trials, at the same rungs


def trial_workers(driver_pid: int) -> list:
    """The Ray worker processes running trials under this driver (its local Ray's raylet starts them)."""
    import psutil

    try:
        family = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in family:
        try:
            if "ray::ImplicitFunc" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(server)


def test_remote_tracking_against_a_real_mlflow_server(tmp_path, mlflow_server):
    out = study(tmp_path, "--smoke", uri=mlflow_server)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (parent,), children = runs_of(client, "quick-smoke")
    assert len(children) == 3 and all(r.data.tags["stop_reason"] == "completed" for r in children)
    # artifacts went through the server into its artifact store, not into a local folder
    confirm = next(r for r in children if r.data.tags["phase"] == "confirm")
    assert {a.path for a in client.list_artifacts(confirm.info.run_id)} >= {"checkpoint.pt", "markov_chain.png"}
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"plan.json", "space.yaml", "report"}
    assert any((tmp_path / "server-artifacts").rglob("checkpoint.pt"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_two_studies_started_at_once_on_a_new_store_both_finish(tmp_path):
    """Both would create MLflow's tables in a new sqlite store at once (alembic's 'online migration
    expected to match one row' in one of them); the store's schema is made once, under its lock."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    procs = [study(tmp_path / name, "--smoke", uri=uri, wait=False) for name in ("a", "b")
             if (tmp_path / name).mkdir() is None]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-2000:] for o in outs)
    _, children = runs_of(MlflowClient(uri), "quick-smoke")
    assert len(children) == 6 and all(r.data.tags["stop_reason"] == "completed" for r in children)


def test_a_trial_no_node_can_hold_is_refused_before_anything_starts(tmp_path):
    """A local Ray cannot grow: 64 GPUs per trial would wait forever (`1 PENDING`), so it is refused
    in one line that names what the nodes have, and nothing is written."""
    out = study(tmp_path, "--smoke", "--gpus-per-trial", "64")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "64 GPUs per trial, but no node of this Ray has that (nodes: " in err[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    out = study(tmp_path, "--smoke", uri=f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: MLflow tracking server http://127.0.0.1:")
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()


def test_a_diverging_trial_fails_alone_and_the_study_goes_on(tmp_path):
    p = space(tmp_path, study="nan", fixed={"epochs": 2, "K": 2, "method": "necst"},
              search={"lr": {"grid": [0.001, 1.0e30]}}, max_concurrent=1, confirm=False)
    out = study(tmp_path, "--space", str(p))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 completed, 0 early_stopped, 1 failed" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = runs_of(client, "nan")
    failed = [r for r in children if r.data.tags["stop_reason"] == "failed"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED" and failed[0].data.params["lr"] == "1e+30"
    assert failed[0].data.tags["failure"].startswith("training diverged at epoch 1")
    assert parent.data.metrics["study/failed"] == 1 and parent.info.status == "FINISHED"
    report = next((tmp_path / "results").glob("nan-*/report/report.md")).read_text()
    assert "## Failed trials" in report and "training diverged at epoch 1" in report


def test_tracking_server_lost_mid_study_trials_go_on_and_nothing_is_lost(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    p = space(tmp_path, study="outage", fixed={"epochs": 8, "K": 2, "method": "necst"},
              search={"lr": {"grid": [0.001, 0.002]}}, max_concurrent=1, confirm=False)
    proc = study(tmp_path, "--space", str(p), uri=uri, wait=False)
    client = MlflowClient(uri)
    deadline = time.time() + 300
    while time.time() < deadline:   # lose the server once the first trial has logged two epochs
        time.sleep(0.5)
        try:
            _, children = runs_of(client, "outage")
            if children and len(client.get_metric_history(children[0].info.run_id, M.EPOCH)) >= 2:
                break
        except Exception:
            continue
    stop_server(server)
    deadline = time.time() + 300     # the server stays away until every trial has finished training
    while time.time() < deadline and proc.poll() is None:
        done = [f for f in (tmp_path / "results").glob("outage-*/trainable_*/result.json")
                if '"epoch": 8' in f.read_text()]
        if len(done) == 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None       # ... and the study is waiting for it (--tracking-grace)
    server = start_server(tmp_path, port)
    try:
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-4000:]
        assert "is unreachable" in out and "reachable again" in out
        (parent,), children = runs_of(client, "outage")
        assert parent.info.status == "FINISHED" and len(children) == 2
        for r in children:           # every trial complete, every epoch logged exactly once
            assert r.data.tags["stop_reason"] == "completed" and r.info.status == "FINISHED"
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == list(range(1, 9))
            assert "checkpoint.pt" in {a.path for a in client.list_artifacts(r.info.run_id)}
    finally:
        stop_server(server)


@pytest.mark.parametrize("stack", [2])   # one seed: tests/test_multinode.py loses a whole node under a trial
def test_killed_worker_resumes_from_its_checkpoint_in_the_same_run(tmp_path, data_dir, stack):
    """SIGKILL the process training a stacked trial: Ray retries it (FailureConfig), every seed
    continues from its own state rather than restarting, and its MLflow run continues without
    doubled metrics."""
    import json

    p = space(tmp_path, study="kill", dataset="mnist", max_concurrent=1, search={"lr": {"grid": [0.001, 0.002]}},
              fixed={"epochs": 6, "K": 2, "method": "necst", "max_train_examples": 3000},
              seeds=list(range(stack)), stack=stack, confirm=False)
    proc = study(tmp_path, "--space", str(p), "--data-dir", str(data_dir), wait=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    killed, deadline = False, time.time() + 300
    while not killed and time.time() < deadline:   # once the first trial has logged 2 epochs
        time.sleep(0.3)
        try:
            _, children = runs_of(client, "kill")
            if not children or len(client.get_metric_history(children[0].info.run_id, M.EPOCH)) < 2:
                continue
        except Exception:
            continue
        for worker in trial_workers(proc.pid):       # this study's only: never another Ray's on the machine
            worker.kill()
            killed = True
    out, _ = proc.communicate(timeout=400)
    assert killed and proc.returncode == 0, out[-4000:]
    (parent,), children = runs_of(client, "kill")
    assert len(children) == 2 * stack and parent.info.status == "FINISHED"
    assert sorted(r.data.tags["seed"] for r in children) == sorted([str(s) for s in range(stack)] * 2)
    for r in children:
        assert r.data.tags["stop_reason"] == "completed"
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == list(range(1, 7))
    # in Ray Tune's own record the killed trial failed once and went on from its checkpoint
    trial_dirs = sorted((tmp_path / "results").glob("kill-*/trainable_*"))
    failed = [d for d in trial_dirs if (d / "error.txt").exists()]
    assert len(failed) == 1
    results = [json.loads(line) for line in (failed[0] / "result.json").read_text().splitlines()]
    results = [r for r in results if not r.get("replayed")]   # the restarted trial's report of its past
    epochs = [r[M.EPOCH] for r in results]
    # no epoch reported twice, and the new process began after epoch 1: it did not start over.
    # (Tune's result.json can miss the line of the result reported just before the worker died,
    # though our callback had it: MLflow, checked above, is the complete record.)
    assert epochs == sorted(set(epochs)) and epochs[0] == 1 and epochs[-1] == 6
    restarted = [r[M.EPOCH] for r in results if r["pid"] != results[0]["pid"]]
    assert restarted and restarted[0] > 1


def test_a_driver_killed_the_moment_a_trial_saved_its_state_resumes_from_that_state(tmp_path):
    """SIGKILL of the driver right after a trial wrote its state (its 3rd epoch of 6), before the
    driver recorded that epoch: the window in which Tune's own bookkeeping lags the trial (where
    Tune once deleted a checkpoint before its next snapshot). --resume: the trial goes on from its
    own state, does not train those epochs again, and MLflow has every epoch once. The storage is
    given as a URI (file://), the way an s3:// storage is: the state goes through pyarrow.fs."""
    import json

    p = space(tmp_path, study="window", confirm=False, max_concurrent=1, fixed={"epochs": 6, "K": 2, "method": "necst"})
    storage = ("--storage", f"file://{tmp_path / 'results'}")
    proc = study(tmp_path, "--space", str(p), *storage, wait=False)
    writes, last, deadline = 0, None, time.time() + 300
    while writes < 3 and time.time() < deadline:
        for f in (tmp_path / "results").glob("window-*/state/*.pt"):
            stamp = f.stat().st_mtime_ns
            if stamp != last:
                writes, last = writes + 1, stamp
        time.sleep(0.002)
    proc.kill()                                              # the state of epoch 3 is written: now
    proc.communicate(timeout=60)
    assert writes == 3
    time.sleep(3)                                            # its local Ray goes down with it
    out = study(tmp_path, "--space", str(p), *storage, "--resume")   # found by listing the storage
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), (run,) = runs_of(client, "window")
    assert parent.info.status == "FINISHED" and run.data.tags["stop_reason"] == "completed"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, M.EPOCH)) == list(range(1, 7))
    results = [json.loads(line) for line in next((tmp_path / "results").glob("window-*/trainable_*/result.json"))
               .read_text().splitlines()]
    resumed = [r for r in results if r["pid"] == results[-1]["pid"]]         # the process after --resume
    replayed = [r[M.EPOCH] for r in resumed if r.get("replayed")]
    after = [r[M.EPOCH] for r in resumed if not r.get("replayed")]
    assert replayed[-1] >= 3 and after == list(range(replayed[-1] + 1, 7))   # from its state: none trained twice
