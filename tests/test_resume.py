"""A study stopped from outside (Ctrl-C, SIGTERM, SIGKILL of the driver) and finished with --resume:
one MLflow run per trial and seed, every epoch once, ASHA's decisions as without the stop."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient
from procs import small_disk
from runner import completed, kill_driver, runs_of, space, study, wait_for

from iabf import metrics as M
from iabf.record import STATE_RESET
from studies.signals import StopSignal
from studies.space import SpaceError
from studies.folder import resolve_experiment

@pytest.mark.slow
def test_a_study_stopped_every_way_a_study_stops_resumes_to_one_run_per_trial_and_seed(tmp_path):
    """One study through the stops it meets, each followed by --resume: a second driver refused while the
    first runs; SIGTERM while a trial trains (what a scheduler, `kill`, `docker stop` or a spot reclaim sends: a
    clean stop with the --resume command, not Ray's native abort); the unfinished trial's state file
    truncated; the study file edited (refused, naming what changed, nothing run); SIGKILL of the driver
    during the confirmation phase. The study completes with one MLflow run per trial and seed, every
    epoch once, none left RUNNING, finished trials not rerun, the damaged trial trained again from its
    start in its own run. (Ctrl-C: test_a_search_interrupted_between_rungs_...)"""
    p = space(tmp_path, study="resume", fixed={"epochs": 16, "K": 2, "method": "necst", "batch_size": 10},
              search={"lr": {"grid": [0.001, 0.002, 0.003]}}, seeds=[0, 1], stack=1, max_concurrent=1)
    began = p.read_text()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    proc = study(tmp_path, "--space", str(p), wait=False)
    wait_for(client, "resume", lambda runs: any(M.EPOCH in r.data.metrics for r in runs))
    second = study(tmp_path, "--space", str(p), "--resume")            # 1. a second driver, the first alive
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert re.fullmatch(rf"error: study \S+/resume-\d+-\d+ is being run by pid {proc.pid} on host "
                        rf"{re.escape(socket.gethostname())} since [\d-]+ [\d:]+ \w+; wait for it to end, or stop it "
                        rf"\(Ctrl-C or kill -TERM on that host\), then --resume", second.stderr.strip()), second.stderr

    # a trial finished and another under way, in the search or the confirmation (the search may be over)
    wait_for(client, "resume", lambda runs: len(completed(runs)) >= 1 and any(
        not r.data.tags.get("stop_reason") and r.data.metrics.get(M.EPOCH, 0) >= 2 for r in runs))
    proc.send_signal(signal.SIGTERM)                                  # 2. SIGTERM
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in first, first[-3000:]
    assert "Traceback" not in first and "Aborted" not in first and "SIGTERM received" not in first
    _, before = runs_of(client, "resume")
    assert all(r.info.status != "RUNNING" for r in before)          # nothing left RUNNING
    done = {r.data.tags["uid"]: r.info.run_id for r in before if r.data.tags.get("stop_reason")}
    unfinished = next(r for r in before if not r.data.tags.get("stop_reason"))
    state = next((tmp_path / "results").glob(f"resume-*/state/{unfinished.data.tags['uid']}.pt"))
    state.write_bytes(state.read_bytes()[:100])                       # 3. damage from outside: truncated

    edited = yaml.safe_load(began)                                    # 4. the study file edited
    edited["seeds"], edited["search"]["lr"]["grid"] = [0, 1, 2], [0.001, 0.002, 0.005]
    p.write_text(yaml.safe_dump(edited))
    out = study(tmp_path, "--space", str(p), "--resume")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: --resume {tmp_path / 'results'}/resume-") and "seeds: [0, 1] -> [0, 1, 2]" in line, line
    assert re.search(r"search\.lr: .*0\.003.* -> .*0\.005", line) and "resources" not in line, line
    _, after = runs_of(client, "resume")
    assert {(r.info.run_id, r.info.status) for r in after} == {(r.info.run_id, r.info.status) for r in before}
    p.write_text(began)                                               # restored

    proc = study(tmp_path, "--space", str(p), "--resume", wait=False)
    # the damaged trial trains again (its run says so), and the confirmation phase is under way
    wait_for(client, "resume", lambda runs: any(STATE_RESET in r.data.tags for r in runs) and any(
        r.data.tags["phase"] == "confirm" and not r.data.tags.get("stop_reason") and M.EPOCH in r.data.metrics
        for r in runs))
    resumed = kill_driver(proc)                                       # 5. the driver dies: SIGKILL
    said = [line for line in resumed.splitlines() if "could not be read" in line]
    assert said and str(state) in said[0] and "trains again from its first epoch" in said[0], resumed[-3000:]
    assert state.with_name(state.name + ".damaged").exists()

    out = study(tmp_path, "--space", str(p), "--resume")              # 6. finish the study
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    children = finished_once(client, "resume", runs=5, epochs=16)     # 3 search + 2 confirmation
    assert Counter(r.data.tags["phase"] for r in children) == {"search": 3, "confirm": 2}
    for uid, run_id in done.items():                                   # finished trials kept their runs
        assert next(r for r in children if r.data.tags["uid"] == uid).info.run_id == run_id
    again = next(r for r in children if r.info.run_id == unfinished.info.run_id)   # the damaged one: same run
    assert "could not be read" in again.data.tags[STATE_RESET]
    confirmed = {r.data.tags["confirms"] for r in children if r.data.tags["phase"] == "confirm"}
    assert len(confirmed) == 1 and confirmed <= {r.data.tags["uid"] for r in children}


@pytest.mark.slow
def test_a_search_interrupted_between_rungs_stops_the_same_trials_as_an_uninterrupted_one(tmp_path):
    """One search group of 6 configurations run one at a time (deterministic order and curves),
    ASHA rungs at epochs 1, 2, 4: interrupted mid-search (Ctrl-C) and resumed, ASHA stops exactly
    the trials it stops in the same study run without interruption."""
    # batches of 10 (as in every test here): slow enough epochs that the Ctrl-C lands with trials still
    # to run (at 100 the six trials took 0.4 s each, and the signal once arrived after the fourth)
    spec = dict(study="rungs", fixed={"epochs": 6, "K": 2, "method": "necst", "batch_size": 10}, confirm=False,
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
    assert proc.returncode == 130 and "of the study's 6 runs (a trial per seed) ended" in first, first[-3000:]
    _, before = runs_of(client, "rungs")
    assert 2 <= len([r for r in before if r.data.tags.get("stop_reason") in ("completed", "early_stopped")]) < 6
    out = study(b, "--space", str(space(b, **spec)), "--resume")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    resumed = stopped(b)
    print(f"stopped (lr: epoch) uninterrupted {uninterrupted}, resumed {resumed}")
    assert resumed == uninterrupted and uninterrupted        # the same trials, at the same rungs


def test_a_stop_signal_during_the_fit_is_remembered_and_handed_to_tune_once(monkeypatch):
    """The stop that lands between two trials (no trial unfinished to show it) is still a stop: the
    signal is remembered and passed to the handler this fit's Tune keeps for SIGUSR1 (not an
    earlier fit's); outside the fit, before Tune's handler, or a second time (the user insists),
    it raises KeyboardInterrupt."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    try:
        stop = StopSignal()
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"    # Tune leaves SIGINT to us
        with pytest.raises(KeyboardInterrupt):                       # before the fit: a plain interrupt
            os.kill(os.getpid(), signal.SIGINT)
        told = []
        signal.signal(signal.SIGUSR1, lambda sig, frame: told.append(["an earlier fit's", sig]))
        with stop.during_fit():
            with pytest.raises(KeyboardInterrupt):                   # before Tune installs its handler
                os.kill(os.getpid(), signal.SIGINT)
            assert stop.received is None
            signal.signal(signal.SIGUSR1, lambda sig, frame: told.append(sig))   # what Tune installs in fit
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)                                         # Python runs handlers between bytecodes
            assert stop.received == "SIGTERM" and told == [signal.SIGTERM]
            with pytest.raises(KeyboardInterrupt):                   # a second stop does not wait for Tune
                os.kill(os.getpid(), signal.SIGINT)
        assert told == [signal.SIGTERM] and not stop.fitting
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_a_resumed_study_tracks_to_the_uri_it_is_resumed_with():
    """Tune restores the tracking callback from its pickle, with the URI the study began with; a study
    resumed where its server has moved (a new SLURM job starts it on a port of its own: tests/test_slurm.py)
    must write to the server it was resumed with, in the same experiment and parent run."""
    import pickle

    from studies.tracking import MLflowTracking

    began = MLflowTracking("http://10.0.0.1:30001", "7", "parent", "study")
    try:
        MLflowTracking.resumed_uri = "http://10.0.0.1:30002"
        resumed = pickle.loads(pickle.dumps(began))
    finally:
        MLflowTracking.resumed_uri = None
    assert (resumed.uri, resumed.experiment_id, resumed.parent_run_id) == ("http://10.0.0.1:30002", "7", "parent")
    assert began.uri == "http://10.0.0.1:30001" and pickle.loads(pickle.dumps(began)).uri == began.uri


@pytest.mark.slow
def test_a_full_storage_stops_the_study_in_one_line_and_resume_finishes_it_once_there_is_room(tmp_path):
    """--storage on a 3 MB filesystem. Full to begin with: one line, exit 1, nothing left. Then the trial that finds no room for its state stops the study, which
    says so in one line (where, how much was free) and exits 1, no run left RUNNING, the run saying why.
    A --resume while the disk is still full (filled to the last byte, so that Tune's own save fails too)
    is stopped the same way and damages nothing; once there is room, --resume finishes the study: one run
    per trial and seed, every epoch logged once."""
    results = tmp_path / "results"
    p = space(tmp_path, study="full", fixed={"epochs": 6, "K": 2, "method": "iabf"},
              search={"lam": {"grid": [0.1, 0.01]}}, seeds=[0], stack=1, max_concurrent=1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    line = re.compile(rf"error: trial \w+: no space left on device writing the trial's state to {re.escape(str(results))}"
                      rf"/full-[\d-]+/state/[\w-]+\.pt \([\d.]+ MB to write; (?P<free>[\d.]+ [KM]?B) free of 3\.0 MB\); "
                      rf"the study stopped: \d of its 3 runs \(a trial per seed\) ended, 1 unfinished; make room on the "
                      rf"storage, then continue with:\n  python studies/ablation.py --space {re.escape(str(p))} "
                      rf"--resume {re.escape(str(results))}/full-[\d-]+")
    with small_disk(results, "3m") as ns:
        fill = [*ns, "bash", "-c", f"dd if=/dev/zero of={results}/filler bs=64k 2>/dev/null; true"]
        subprocess.run(fill, check=True)                               # no room to begin with: nothing is left
        out = study(tmp_path, "--space", str(p), prefix=ns)
        assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
        assert re.fullmatch(rf"error: no space left on device writing the study's lock to {re.escape(str(results))}"
                            r"/full-[\d-]+/driver\.lock \(0 B free of 3\.0 MB\); make room on the storage, then run the "
                            r"study again", out.stderr.strip()), out.stderr
        listed = subprocess.run([*ns, "ls", "-A", str(results)], capture_output=True, text=True, check=True)
        assert listed.stdout.split() == ["filler"]
        subprocess.run([*ns, "rm", f"{results}/filler"], check=True)

        out = study(tmp_path, "--space", str(p), prefix=ns)
        assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
        assert line.fullmatch(out.stderr.strip()), out.stderr[-3000:]
        _, runs = runs_of(client, "full")
        assert all(r.info.status != "RUNNING" for r in runs)
        (stopped,) = [r for r in runs if not r.data.tags.get("stop_reason")]
        assert stopped.info.status == "KILLED" and "no space left on device" in stopped.data.tags["interruption"]

        subprocess.run(fill, check=True)
        out = study(tmp_path, "--space", str(p), "--resume", prefix=ns)   # still full: Tune's own last save fails too
        assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
        said = line.fullmatch(out.stderr.strip())
        assert said and said["free"] in ("0 B", "4.0 KB"), out.stderr[-3000:]
        # what Tune could not write whole it did not write: its state reads, and no part of a file is left
        check = ("import glob, json, pickle, sys; files = glob.glob(sys.argv[1] + '/full-*/*.json'); "
                 "[(pickle.loads if d[:1] == b'\\x80' else json.loads)(d) for d in (open(f, 'rb').read() for f in files)]; "
                 "print(len(files), len(glob.glob(sys.argv[1] + '/**/*.part', recursive=True)))")
        state = subprocess.run([*ns, sys.executable, "-c", check, str(results)], capture_output=True, text=True)
        assert state.returncode == 0 and state.stdout.split()[1:] == ["0"] and int(state.stdout.split()[0]) >= 2, state.stderr

        subprocess.run([*ns, "bash", "-c", f"rm {results}/filler && mount -o remount,size=64m {results}"], check=True)
        out = study(tmp_path, "--space", str(p), "--resume", prefix=ns)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for r in finished_once(client, "full", runs=3, epochs=6):          # 2 search + 1 confirmation
        assert "interruption" not in r.data.tags                       # it ran again: what stopped it is over


def test_a_resume_from_a_tune_state_that_cannot_be_read_is_refused_naming_it(tmp_path):
    """Tune starts a study over from nothing when its newest experiment state cannot be read (written short,
    damaged): --resume refuses instead, naming the file; a readable one resumes."""
    folder = tmp_path / "results" / "s-20260101-000000"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"\x80")
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    study = SimpleNamespace(name="s")
    assert resolve_experiment(str(tmp_path / "results"), study, "latest") == str(folder)
    newest = folder / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text('{"trial_data": [["{\\"trial_id')                    # written short
    for resume in ("latest", str(folder)):
        with pytest.raises(SpaceError, match=rf"^--resume {folder}: Tune's experiment state {newest} cannot be read "
                                             r"\(.+\); move it aside to resume from the one before it, if any$"):
            resolve_experiment(str(tmp_path / "results"), study, resume)


def finished_once(client, name: str, runs: int, epochs: int) -> list:
    """The study finished: its parent run FINISHED, one child run per trial and seed, each completed with
    every epoch logged once. Returns the child runs."""
    (parent,), children = runs_of(client, name)
    assert parent.info.status == "FINISHED"
    keys = Counter((r.data.tags["uid"], r.data.tags["seed"]) for r in children)
    assert len(keys) == runs and set(keys.values()) == {1}             # no duplicate run
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["stop_reason"] == "completed"
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == list(range(1, epochs + 1))
    return children


def test_a_study_begun_before_its_arms_were_recorded_resumes_and_a_new_one_is_compared_arm_by_arm(tmp_path):
    """A parent run without the arms' `variant.` keys (a study begun before the record kept them) is not
    refused for lacking them; one with them is refused when an arm's search changed."""
    import shutil

    from iabf.record import VARIANT
    from runner import template_store
    from studies.tracking import TAG_EXPERIMENT_DIR, changed_since, study_params
    from studies.validation import validate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shutil.copyfile(template_store(), tmp_path / "mlflow.db")
    raw = {"study": "s", "dataset": "digits", "searcher": "optuna", "num_samples": 3,
           "variants": [{"method": "necst"}, {"method": "iabf", "search": {"lam": {"loguniform": [0.001, 0.3]}}}]}
    study = validate(raw, "s.yaml")
    client = MlflowClient(uri)
    exp = client.create_experiment("s")
    for folder, keep in (("old", lambda k: not k.startswith(VARIANT)), ("new", lambda k: True)):
        run = client.create_run(exp, tags={TAG_EXPERIMENT_DIR: folder})
        for k, v in study_params(study).items():
            if keep(k):
                client.log_param(run.info.run_id, k, v)
    assert changed_since(uri, study, "old") == [] and changed_since(uri, study, "new") == []
    raw["variants"][1]["search"]["lam"] = {"loguniform": [0.001, 0.1]}
    edited = validate(raw, "s.yaml")
    assert changed_since(uri, edited, "old") == []                     # nothing recorded to compare with
    (line,) = changed_since(uri, edited, "new")
    assert line.startswith(f"{VARIANT}1.search.lam: ") and "0.3" in line and "0.1]" in line
