"""MLflow tracking for studies: one parent run per study, one child run per trial.

Ray's own MLflowLoggerCallback makes flat runs and marks early-stopped trials FINISHED; this thin
layer adds the parent/child structure, stop reasons and resumption without duplicates. Only the
driver writes to MLflow (a single writer: no races between trials), through MlflowClient.

Child-run tags: study, trial_id, seed, config_hash, git_commit, stop_reason in
{completed, early_stopped, failed}. A resumed study finds its runs again by these tags.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from iabf import metrics as M
from iabf.train import run_name
from iabf.tune import ARTIFACTS, STATE, config_from_params

STOP_REASONS = ("completed", "early_stopped", "failed")
STATUS = {"completed": "FINISHED", "early_stopped": "KILLED", "failed": "FAILED"}
TAG_EXPERIMENT_DIR = "iabf.experiment_dir"   # on the parent: the Tune experiment it tracks
ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(cfg: dict) -> str:
    """Identifies a configuration across its seeds (seed and machine-specific keys left out)."""
    keep = {k: v for k, v in cfg.items() if k not in ("seed", "data_dir", "device", "download")}
    return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def start_study(uri: str, study, experiment_dir: str, resume: bool) -> tuple[str, str]:
    """The study's parent run: created, or on resume found again by its experiment folder.
    Returns (experiment_id, parent_run_id)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study.name)
    exp_id = exp.experiment_id if exp else client.create_experiment(study.name)
    if resume:
        found = client.search_runs([exp_id], f"tags.`{TAG_EXPERIMENT_DIR}` = '{experiment_dir}'", max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return exp_id, found[0].info.run_id
    parent = client.create_run(exp_id, run_name=Path(experiment_dir).name, tags={
        "study": study.name, "git_commit": git_commit(), "space": str(study.path), TAG_EXPERIMENT_DIR: experiment_dir,
        "mlflow.note.content": study.description or f"study {study.name} from {study.path}"})
    run_id = parent.info.run_id
    params = {"searcher": study.searcher, "metric": study.metric, "mode": study.mode, "num_samples": study.num_samples,
              "seeds": study.seeds, "scheduler": study.scheduler or "none", "resources": study.resources,
              **{f"fixed.{k}": v for k, v in study.fixed.items()},
              **{f"search.{k}": v for k, v in study.search.items()}}
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    if study.path and Path(study.path).is_file():
        client.log_text(run_id, Path(study.path).read_text(), "space.yaml")
    return exp_id, run_id


def end_study(uri: str, experiment_id: str, parent_run_id: str, status: str, tracking_seconds: float = 0.0) -> dict:
    """Close the parent run with how its trials ended. Trials still RUNNING were interrupted: their
    runs are marked KILLED (a --resume reopens them), so none stays RUNNING forever."""
    client = MlflowClient(uri)
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=50_000)
    counts = dict.fromkeys((*STOP_REASONS, "interrupted"), 0)
    counts["gpu_hours"] = sum(r.data.metrics.get(M.GPU_SECONDS, 0.0) for r in children) / 3600
    counts["trial_hours"] = sum(r.data.metrics.get(M.WALL_SECONDS, 0.0) for r in children) / 3600
    counts["tracking_seconds"] = tracking_seconds
    for run in children:
        reason = run.data.tags.get("stop_reason")
        if reason is None:
            client.set_terminated(run.info.run_id, status="KILLED")
            reason = "interrupted"
        counts[reason] = counts.get(reason, 0) + 1
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(f"study/{k}", v, now, 0) for k, v in counts.items()])
    client.set_terminated(parent_run_id, status="KILLED" if status == "FINISHED" and counts["interrupted"] else status)
    return counts


def log_report(uri: str, parent_run_id: str, folder: Path) -> None:
    MlflowClient(uri).log_artifacts(parent_run_id, str(folder), "report")


def _timed(hook):
    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
    return timed


class MLflowTracking(tune.Callback):
    """Tune callback writing each trial to its child run. Tune pickles it with the run config and
    restores it on resume, so it holds only plain values; the trial -> run map is rebuilt from tags."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, study: str):
        self.uri, self.experiment_id, self.parent_run_id, self.study = uri, experiment_id, parent_run_id, study
        self._runs: dict[str, list] = {}      # trial_id -> [run_id, last logged epoch]
        self._client = None
        self.seconds = 0.0                    # time spent writing to MLflow (the study's tracking cost)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_runs")}

    def __setstate__(self, state):
        self.__dict__.update(state, _client=None, _runs={}, seconds=0.0)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def _run(self, trial) -> list:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.trial_id = '{trial.trial_id}'")
        if found:  # a resumed trial: same run, and never log an epoch twice
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, M.EPOCH)
            last = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
        else:
            cfg = config_from_params(trial.config).to_dict()
            run = self.client.create_run(self.experiment_id, run_name=run_name(config_from_params(trial.config)), tags={
                "mlflow.parentRunId": self.parent_run_id, "study": self.study, "trial_id": trial.trial_id,
                "seed": str(cfg["seed"]), "config_hash": config_hash(cfg), "git_commit": git_commit()})
            run_id, last = run.info.run_id, 0
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in cfg.items()])
        self._runs[trial.trial_id] = [run_id, last]
        return self._runs[trial.trial_id]

    @_timed
    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self._run(trial)
        epoch = int(result.get(M.EPOCH, 0))
        if epoch <= entry[1]:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in result.items()
                   if k.split("/")[0] in ("train", "val", "test", "best", "sys") or k == M.EPOCH
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        self.client.log_batch(entry[0], metrics=metrics)
        entry[1] = epoch

    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id, _ = self._run(trial)
        if "failure" in (trial.last_result or {}):   # the trainable ended a diverged trial itself
            self.client.set_tag(run_id, "failure", trial.last_result["failure"][:5000])
            return self._finish(run_id, "failed")
        cfg = config_from_params(trial.config)
        done = (trial.last_result or {}).get(M.EPOCH, 0) >= cfg.epochs
        reason = "completed" if done else "early_stopped"
        if done and trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                for name in (STATE, *ARTIFACTS):
                    if (Path(d) / name).exists():
                        self.client.log_artifact(run_id, str(Path(d) / name))
        self._finish(run_id, reason)

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info):
        run_id, _ = self._run(trial)
        error = (trial.get_error() or "unknown error").strip().splitlines()
        self.client.set_tag(run_id, "failure", (error[-1] if error else "unknown error")[:5000])
        self._finish(run_id, "failed")

    def _finish(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, "stop_reason", reason)
        self.client.set_terminated(run_id, status=STATUS[reason])


class TrackingError(RuntimeError):
    """A tracking URI that cannot be used; said before any trial starts."""


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def check_uri(uri: str) -> str:
    """Accept sqlite:///, file:// (or a plain folder) and http(s)://; a server must answer now."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as e:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({type(e).__name__}); "
                                f"start it (mlflow server --host 127.0.0.1 --port 5000) or forward its port") from None
    elif scheme == "sqlite":
        Path(uri.split(":///", 1)[-1]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    elif scheme not in ("", "file"):
        raise TrackingError(f"tracking URI {uri!r} has an unsupported scheme {scheme!r}; "
                            f"use sqlite:///PATH.db, file:///DIR or http(s)://HOST:PORT")
    return uri


