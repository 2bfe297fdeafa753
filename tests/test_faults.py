"""Parts lost under a running study: the tracking server, a trial's worker process, the driver the
moment a trial saved its state. Trials go on or resume from their own state; nothing is lost or doubled."""
import time

import pytest
from mlflow.tracking import MlflowClient
from procs import free_port, start_server, stop_server
from runner import kill_driver, runs_of, space, study, trial_workers

from iabf import metrics as M

pytestmark = pytest.mark.slow


def test_tracking_server_lost_mid_study_trials_go_on_and_nothing_is_lost(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    # 20 epochs of digits: long enough that the study is still training when the server is gone, even
    # with another test beside it (at 8, under make test's two workers, both trials once finished first)
    p = space(tmp_path, study="outage", fixed={"epochs": 20, "K": 2, "method": "necst"},
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
                if '"epoch": 20' in f.read_text()]
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
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == list(range(1, 21))
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
    kill_driver(proc)                                        # the state of epoch 3 is written: now
    assert writes == 3
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

