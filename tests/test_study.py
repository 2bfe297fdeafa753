"""studies/ablation.py end to end: a real local Ray runs real trials, a real MLflow store records
them (sqlite, and a real `mlflow server` on 127.0.0.1), and the test reads MLflow back. Stopping,
resuming and losing parts mid-study: tests/test_resume.py and tests/test_faults.py."""
import re
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from procs import free_port, start_server, stop_server
from runner import runs_of, space, study, trial_workers

from iabf import metrics as M
from iabf.train import load_checkpoint
from studies.tracking import TAG_EXPERIMENT_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_pair(tmp_path_factory):
    """quick.yaml --smoke (one cell, IABF's lambda searched in 2 trials, then the choice confirmed), twice
    at once on a new sqlite store, as two users of one store might: ([a's output, b's], their folder, the
    store's URI). Both would create MLflow's tables at once (alembic's 'online migration expected to
    match one row' in one of them); the store's schema is made once, under its lock."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    procs = [study(tmp_path / name, "--smoke", uri=uri, wait=False) for name in ("a", "b")
             if (tmp_path / name).mkdir() is None]
    deadline = time.time() + 300     # a's trials under way, torch in their workers: what has a's driver loaded?
    while not trial_workers(procs[0].pid) and procs[0].poll() is None and time.time() < deadline:
        time.sleep(0.2)
    driver_libraries = Path(f"/proc/{procs[0].pid}/maps").read_text()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-2000:] for o in outs)
    return SimpleNamespace(outs=outs, folder=tmp_path, uri=uri, driver_libraries=driver_libraries)


def test_the_driver_leaves_torch_to_the_trials(smoke_pair):
    """The study's driver (on a cluster: the head node's process) never imports torch: its trials do,
    in their workers."""
    assert smoke_pair.driver_libraries and "libtorch" not in smoke_pair.driver_libraries


def test_two_studies_started_at_once_on_a_new_store_both_finish(smoke_pair):
    _, children = runs_of(MlflowClient(smoke_pair.uri), "quick-smoke")
    assert len(children) == 6 and all(r.data.tags["stop_reason"] == "completed" for r in children)


def test_smoke_study_tracks_parent_child_params_metrics_artifacts(smoke_pair):
    """One of the pair, read back: its parent run, its three child runs, their params, metrics and
    artifacts, and its console (stdout and stderr together)."""
    stdout, tmp_path = smoke_pair.outs[0], smoke_pair.folder / "a"
    assert stdout.splitlines()[0].startswith("started a local Ray with")
    assert "3 trials: 2 search, 1 confirmation" in stdout
    assert "the configuration chosen per cell and arm by validation distortion (confirmed on every seed)" in stdout
    assert "mlflow ui --backend-store-uri" in stdout
    # the link opens the study's runs (MLflow 3.17's UI otherwise opens its GenAI overview)
    assert "http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning" in stdout
    client = MlflowClient(smoke_pair.uri)
    parents, children = runs_of(client, "quick-smoke")
    (parent,) = [r for r in parents if r.data.tags[TAG_EXPERIMENT_DIR].startswith(str(tmp_path))]
    children = [r for r in children if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
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
    assert "lam" in stdout and "phase" in stdout and "Trial status" not in stdout
    assert len(stdout.splitlines()) < 80
    assert (next((tmp_path / "results").glob("quick-smoke-*")) / "study.log").stat().st_size > 0


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One study for the tests below: IABF's lr searched over three values one trial at a time (so the
    order is fixed) under ASHA: 0.003 learns, 1e-5 barely moves in 4 epochs (stopped), 1e30 diverges
    (fails); the winner confirmed on four seeds, stacked two to a trial. (stdout, client, parent, search
    runs, confirmation runs, folder)"""
    tmp_path = tmp_path_factory.mktemp("searched")
    p = space(tmp_path, study="searched", fixed={"epochs": 4, "K": 2, "method": "iabf"},
              search={"lr": {"grid": [0.003, 0.00001, 1.0e30]}}, seeds=[0, 1, 2, 3], stack=2, max_concurrent=1,
              scheduler={"name": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2})
    out = study(tmp_path, "--space", str(p))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,), children = runs_of(client, "searched")
    search = [r for r in children if r.data.tags["phase"] == "search"]
    confirm = [r for r in children if r.data.tags["phase"] == "confirm"]
    return SimpleNamespace(stdout=out.stdout, client=client, parent=parent, search=search, confirm=confirm,
                           folder=tmp_path)


def test_stacked_seeds_get_a_run_each(searched, tmp_path):
    """The confirmation: 2 trials of 2 stacked seeds each, 4 child runs, one per seed, each like a
    separate trial's."""
    client, children = searched.client, searched.confirm
    assert "5 trials: 3 search, 2 confirmation" in searched.stdout
    assert sorted(int(r.data.tags["seed"]) for r in children) == [0, 1, 2, 3]
    assert sorted(Counter(r.data.tags["trial_id"] for r in children).values()) == [2, 2]   # 2 trials, 2 seeds each
    assert len({r.data.tags["config_hash"] for r in children}) == 1        # one configuration, four seeds
    assert searched.parent.data.metrics["study/completed"] == 5            # the four, and the search's winner
    for run in children:
        seed = run.data.tags["seed"]
        assert run.data.params["seed"] == seed and run.data.params["stack"] == "2"
        assert run.info.run_name.endswith(f"-s{seed}") and run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, M.VAL_DISTORTION)) == [1, 2, 3, 4]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
            "checkpoint.pt", "config.json", "reconstructions.png", "markov_chain.png"}
        ckpt = load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoint.pt", str(tmp_path)))
        assert ckpt["config"]["seed"] == int(seed)
    assert len({r.data.metrics[M.TEST_DISTORTION] for r in children}) == 4
    table = (next((searched.folder / "results").glob("searched-*/report")) / "table1.csv").read_text()
    assert ",4," in table                                                   # n = 4 seeds in the cell


def test_asha_stops_weak_trials_early_and_tracking_says_so(searched):
    """ASHA inside the search stops lr 1e-5; the confirmation trains the winner on every seed, never stopped."""
    client, search, confirm = searched.client, searched.search, searched.confirm
    assert re.search(r"trial \w+ \(.*lr=1e-05.*phase=search.*\): stopped by ASHA after epoch \d", searched.stdout)
    reasons = Counter(r.data.tags["stop_reason"] for r in search)
    assert len(search) == 3 and reasons == {"early_stopped": 1, "completed": 1, "failed": 1}
    for r in search:
        epochs = len(client.get_metric_history(r.info.run_id, M.EPOCH))
        if r.data.tags["stop_reason"] == "early_stopped":
            assert r.data.params["lr"] == "1e-05"
            assert r.info.status == "KILLED" and epochs < 4 and M.TEST_DISTORTION not in r.data.metrics
            assert not client.list_artifacts(r.info.run_id)
        elif r.data.tags["stop_reason"] == "completed":
            assert r.info.status == "FINISHED" and epochs == 4
            winner = r
    for r in confirm:
        assert r.data.tags["stop_reason"] == "completed" and r.data.params["lr"] == "0.003"
        assert r.data.tags["confirms"] == winner.data.tags["uid"]
    assert searched.parent.data.metrics["study/early_stopped"] == 1


def test_a_diverging_trial_fails_alone_and_the_study_goes_on(searched):
    assert "5 completed, 1 early_stopped, 1 failed" in searched.stdout
    failed = [r for r in searched.search if r.data.tags["stop_reason"] == "failed"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED" and failed[0].data.params["lr"] == "1e+30"
    assert failed[0].data.tags["failure"].startswith("training diverged at epoch 1")
    assert searched.parent.data.metrics["study/failed"] == 1 and searched.parent.info.status == "FINISHED"
    report = next((searched.folder / "results").glob("searched-*/report/report.md")).read_text()
    assert "## Failed trials" in report and "training diverged at epoch 1" in report


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


def test_a_trial_no_node_can_hold_is_refused_before_anything_starts(tmp_path):
    """A local Ray cannot grow: 64 GPUs per trial would wait forever (`1 PENDING`), so it is refused
    in one line that names what the nodes have, and nothing is written."""
    out = study(tmp_path, "--smoke", "--gpus-per-trial", "64", new_store=True)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "64 GPUs per trial, but no node of this Ray has that (nodes: " in err[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path):
    out = study(tmp_path, "--smoke", uri=f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: MLflow tracking server http://127.0.0.1:")
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()
