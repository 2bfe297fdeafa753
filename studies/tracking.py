"""MLflow tracking for studies: one parent run per study, one child run per trial.

Ray's own MLflowLoggerCallback makes flat runs and marks early-stopped trials FINISHED; this thin
layer adds the parent/child structure, stop reasons and resumption without duplicates. Only the
driver writes to MLflow (a single writer: no races between trials), through MlflowClient.
A stacked trial (Config.stack seeds in one model) gets one child run per seed, like separate trials.

Child-run tags: study, trial_id, seed, config_hash, git_commit, stop_reason in
{completed, early_stopped, failed}; node_id and hostname (the Ray node and host that trained it
last) and node_ids (every node it ran on, in order: a trial moved by a lost node shows two); and
the protocol's labels (studies/protocol.py): phase (search or confirm), cell, arm, uid and, on a
confirmation run, confirms (the uid of the search trial whose configuration it confirms; empty when
the group had one configuration, so nothing to search).
A resumed study finds its runs again by uid and seed: a trial that Tune suggests again after a
driver died keeps its run, even under a new trial id.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from analysis.sequential import CURRENT_TEST, Design
from iabf import metrics as M
from iabf import record as R
from iabf.config import run_name
from iabf.record import ARTIFACTS, HOSTNAME, NODE_ID, REPLAYED, STATE_RESET, VARIANT, config_from_params, parts
from studies.archive import artifact_location
from studies.plan import record
from studies.store import TRACKING_ERRORS, store_problem

TAG_EXPERIMENT_DIR = "iabf.experiment_dir"   # on the parent: the Tune experiment it tracks
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)   # constant for a study: one subprocess, not one per trial
def git_commit(root: Path = ROOT) -> str:
    """The commit the study's code (the checkout at root) comes from, `+dirty` where a tracked file differed
    from it when the study began (its numbers then come from a working tree no commit holds)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                 capture_output=True, text=True, timeout=5)
        head = out.stdout.strip()
        return (head + ("+dirty" if changed.stdout.strip() else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(cfg: dict) -> str:
    """Identifies a configuration across its seeds (seed and machine-specific keys left out)."""
    keep = {k: v for k, v in cfg.items() if k not in R.NOT_CONFIG}
    return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def ui_link(base: str, exp_id: str) -> str:
    """The study's runs in MLflow's UI. MLflow 3.17's UI ignores the experiment's kind and opens on
    its GenAI view unless the link (or the browser's last choice) asks for model training."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}?workflowType=machine_learning"


def study_params(study) -> dict[str, str]:
    """The study's parameters as its parent run records them."""
    params = {"searcher": study.searcher, R.METRIC: study.metric, R.MODE: study.mode, "num_samples": study.num_samples,
              "seeds": study.seeds, "search_seeds": study.search_seeds, R.CONFIRMING: study.confirm,
              R.CELLS: study.cells or R.DEFAULT_CELL_TEXT, "stack": study.stack,
              R.ARMS: [a.name for a in study.arms],
              "scheduler": study.scheduler or "none", "resources": study.resources,
              **{f"fixed.{k}": v for k, v in study.fixed.items()},
              **{f"by_dataset.{d}.{k}": v for d, values in study.by_dataset.items() for k, v in values.items()},
              "chain_steps": study.chain_steps,
              **({R.ADAPTIVE: study.adaptive.text()} if study.adaptive else {}),   # absent: a fixed `seeds`
              **{f"search.{k}": v for k, v in study.search.items()},
              # each arm's own values and search (keys by position: an arm's name may hold = and +, which
              # MLflow's keys cannot)
              **{f"{VARIANT}{i}.{k}": v for i, a in enumerate(study.arms) for k, v in a.fixed.items()},
              **{f"{VARIANT}{i}.search.{k}": v for i, a in enumerate(study.arms) for k, v in a.search.items()}}
    return {k: str(v)[:6000] for k, v in params.items()}


# what a resumed study may change: where and how its trials run, not what they are
RESUME_MAY_CHANGE = ("resources", "chain_steps")


def changed_since(uri: str, study, experiment_dir: str) -> list[str]:
    """What in `study` (the study file now, with the command line's overrides) differs from the plan the
    study began with (its parent run's parameters), one 'key: then -> now' each; [] when nothing does,
    or when the store has no parent run for the folder (nothing to compare with)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study.name)
    parent = exp and parent_of(client, exp.experiment_id, experiment_dir)
    if not parent:
        return []
    then, now = parent.data.params, study_params(study)
    if not any(k.startswith(VARIANT) for k in then):   # begun before the record kept its arms: not compared
        now = {k: v for k, v in now.items() if not k.startswith(VARIANT)}
    return [f"{k}: {then.get(k, '(none)')} -> {now.get(k, '(none)')}{replaced_test(then) if k == R.ADAPTIVE else ''}"
            for k in sorted(set(then) | set(now)) if k not in RESUME_MAY_CHANGE and then.get(k) != now.get(k)]


def replaced_test(params: dict) -> str:
    """Why an adaptive study begun under a replaced test cannot go on (its looks are that test's), or ''."""
    design = Design.parse(params.get(R.ADAPTIVE))
    return "" if design is None or design.test == CURRENT_TEST else (
        f" (its looks were taken by {design.test}, since replaced by {CURRENT_TEST}: docs/seeds.md; the seeds it "
        "has cannot be continued under another test's boundaries)")


def parent_of(client: MlflowClient, exp_id: str, experiment_dir: str):
    """The parent run of the study whose folder is experiment_dir, or None."""
    found = client.search_runs([exp_id], f"tags.`{TAG_EXPERIMENT_DIR}` = '{experiment_dir}'", max_results=1)
    return found[0] if found else None


def start_study(uri: str, study, experiment_dir: str, resume: bool) -> tuple[str, str]:
    """The study's parent run: created, or on resume found again by its experiment folder.
    Returns (experiment_id, parent_run_id)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study.name)
    storage = experiment_dir.rsplit("/", 1)[0]
    keep = artifact_location(storage, study.name)   # on a durable storage, the artifacts outlive the cluster
    exp_id = exp.experiment_id if exp else client.create_experiment(study.name, artifact_location=keep)
    if keep and exp and not exp.artifact_location.startswith(storage):
        print(f"warning: experiment {study.name!r} (made by an earlier study) keeps its artifacts in "
              f"{exp.artifact_location}, not on this study's storage {storage}; a new name for the study keeps "
              f"them there", file=sys.stderr, flush=True)
    # MLflow 3's UI opens an experiment of no declared kind on its GenAI overview (traces, "No
    # data"); declared as model training, it opens on the study's runs
    client.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
    if resume and (found := parent_of(client, exp_id, experiment_dir)):
        client.update_run(found.info.run_id, status="RUNNING")
        return exp_id, found.info.run_id
    parent = client.create_run(exp_id, run_name=Path(experiment_dir).name, tags={
        R.STUDY: study.name, R.GIT_COMMIT: git_commit(), "space": str(study.path), TAG_EXPERIMENT_DIR: experiment_dir,
        "mlflow.note.content": study.description or f"study {study.name} from {study.path}"})
    run_id = parent.info.run_id
    params = [Param(k, v) for k, v in study_params(study).items()]
    for i in range(0, len(params), 100):   # MLflow takes at most 100 parameters a batch
        client.log_batch(run_id, params=params[i:i + 100])
    if study.path and Path(study.path).is_file():
        client.log_text(run_id, Path(study.path).read_text(errors="replace"), "space.yaml")
    client.log_dict(run_id, record(study), R.PLAN_ARTIFACT)
    return exp_id, run_id


def end_study(uri: str, experiment_id: str, parent_run_id: str, status: str, tracking_seconds: float = 0.0) -> dict:
    """Close the parent run with how its trials ended. Trials still RUNNING were interrupted: their
    runs are marked KILLED (a --resume reopens them), so none stays RUNNING forever."""
    client = MlflowClient(uri)
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=50_000)
    counts = dict.fromkeys((*R.STOP_REASONS, R.INTERRUPTED), 0)
    counts["gpu_hours"] = sum(r.data.metrics.get(M.GPU_SECONDS, 0.0) for r in children) / 3600
    counts["trial_hours"] = sum(r.data.metrics.get(M.WALL_SECONDS, 0.0) for r in children) / 3600
    counts["tracking_seconds"] = tracking_seconds
    for run in children:
        reason = run.data.tags.get(R.STOP_REASON)
        if reason is None:
            client.set_terminated(run.info.run_id, status="KILLED")
            reason = R.INTERRUPTED
        counts[reason] = counts.get(reason, 0) + 1
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(f"study/{k}", v, now, 0) for k, v in counts.items()])
    client.set_terminated(parent_run_id, status="KILLED" if status == "FINISHED" and counts[R.INTERRUPTED] else status)
    return counts


def log_report(uri: str, parent_run_id: str, folder: Path) -> None:
    MlflowClient(uri).log_artifacts(parent_run_id, str(folder), "report")


def end_of(trial, error: bool = False) -> tuple[str, str | None]:
    """How a trial ended, from what Tune knows when it ends: (stop_reason, failure or None).
    error: Tune reports the trial as errored (its process raised, retries used up)."""
    if error:
        lines = (trial.get_error() or "unknown error").strip().splitlines()
        return R.FAILED, lines[-1] if lines else "unknown error"
    last = trial.last_result or {}
    if R.FAILURE in last:   # the trainable ended a diverged trial itself
        return R.FAILED, last[R.FAILURE]
    if last.get(M.EPOCH, 0) >= config_from_params(trial.config).epochs:
        return R.COMPLETED, None
    return R.EARLY_STOPPED, None


def _timed(hook):
    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
    return timed


@dataclass
class _TrialLog:
    """What is known about one child run (a trial, or one seed of a stacked trial), and what is
    still to be written to it."""
    trial_id: str
    run_name: str
    params: dict
    labels: dict                                    # the protocol's: phase, cell, arm, uid, confirms
    prefix: str = ""                                # of its metrics in the trial's results
    folder: str = ""                                # of its checkpoint and artifacts
    run_id: str | None = None
    epoch: int = 0                                  # highest epoch queued or logged
    metrics: list = field(default_factory=list)     # queued Metric objects
    tags: dict = field(default_factory=dict)        # queued tags
    nodes: list = field(default_factory=list)       # the Ray nodes it ran on, in order
    end: tuple | None = None                        # queued (reason, failure, checkpoint)


class MLflowTracking(tune.Callback):
    """Tune callback writing each trial to its child run. Tune pickles it with the run config and
    restores it on resume, so it holds only plain values; the trial -> run map is rebuilt from tags.

    Hooks only queue; `_sync` writes. If MLflow is unreachable the trials keep training, their
    updates stay queued and are retried every RETRY_S seconds, and `unlogged()` says what is left."""

    RETRY_S = 10.0

    # A resumed study tracks to the URI it is resumed with, not the one it began with (the server may have
    # moved: each SLURM job starts it on a port of its own). Tune restores this callback from its pickle, so
    # the resuming driver names the URI here first (the experiment and parent run are the store's own).
    resumed_uri: str | None = None

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, study: str):
        self.uri, self.experiment_id, self.parent_run_id, self.study = uri, experiment_id, parent_run_id, study
        self._fresh()

    def __getstate__(self):
        return {k: self.__dict__[k] for k in ("uri", "experiment_id", "parent_run_id", "study")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.uri = MLflowTracking.resumed_uri or self.uri
        self._fresh()

    def _fresh(self) -> None:
        self._logs: dict[str, list[_TrialLog]] = {}   # trial id -> its child runs (one per seed)
        self._client, self._retry_at, self._down = None, 0.0, None
        self.seconds = 0.0                    # time spent writing to MLflow (the study's tracking cost)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def problem(self) -> str | None:
        """What the store said last, in words (store_problem), while it takes no writes; None when it does."""
        return self._down

    def unlogged(self) -> int:
        """Updates (metrics and trial ends) not yet written to MLflow."""
        return sum(len(r.metrics) + bool(r.tags) + (r.end is not None) + (r.run_id is None) for r in self._all())

    def _all(self) -> list[_TrialLog]:
        return [log for logs in self._logs.values() for log in logs]

    def _log(self, trial) -> list[_TrialLog]:
        if trial.trial_id not in self._logs:
            labels = {k: str(trial.config[k]) for k in R.LABELS if k in trial.config}
            self._logs[trial.trial_id] = [
                _TrialLog(trial.trial_id, run_name(p.cfg) + ("-search" if labels.get(R.PHASE) == R.SEARCH else ""),
                          p.cfg.to_dict(), labels, p.prefix, p.folder) for p in parts(config_from_params(trial.config))]
        return self._logs[trial.trial_id]

    def _open(self, log: _TrialLog) -> None:
        """Find the trial's run (a resumed trial keeps its run, found by what it is: its uid; by its
        trial id before uids) or create it."""
        who = f"tags.{R.UID} = '{log.labels[R.UID]}'" if R.UID in log.labels else f"tags.trial_id = '{log.trial_id}'"
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and {who} "
                          f"and tags.seed = '{log.params['seed']}'")
        if found:  # never log an epoch twice
            run_id = found[0].info.run_id
            before = [n for n in found[0].data.tags.get(R.NODE_IDS, "").split(",") if n]   # a resumed run's nodes
            if before and log.nodes and log.nodes[0] == before[-1]:                           # ... the same one again
                log.nodes = log.nodes[1:]
            log.nodes = before + log.nodes
            if log.tags:
                log.tags[R.NODE_IDS] = ",".join(log.nodes)
            last = max((m.step for m in self.client.get_metric_history(run_id, M.EPOCH)), default=0)
            self.client.update_run(run_id, status="RUNNING")
            if R.INTERRUPTION in found[0].data.tags:   # it runs again: what stopped it is over
                self.client.delete_tag(run_id, R.INTERRUPTION)
            self.client.set_tag(run_id, R.TRIAL_ID, log.trial_id)
        else:
            cfg = log.params
            run_id = self.client.create_run(self.experiment_id, run_name=log.run_name, tags={
                "mlflow.parentRunId": self.parent_run_id, R.STUDY: self.study, R.TRIAL_ID: log.trial_id,
                R.SEED: str(cfg["seed"]), R.CONFIG_HASH: config_hash(cfg), R.GIT_COMMIT: git_commit(),
                **log.labels}).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in cfg.items()])
            last = 0
        log.run_id, log.epoch = run_id, max(log.epoch, last)
        log.metrics = [m for m in log.metrics if m.step > last]

    def _write(self, log: _TrialLog) -> None:
        if log.run_id is None:
            self._open(log)
        while log.metrics:  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(log.run_id, metrics=log.metrics[:1000])
            log.metrics = log.metrics[1000:]
        if log.tags:
            self.client.log_batch(log.run_id, tags=[RunTag(k, v) for k, v in log.tags.items()])
            log.tags = {}
        if log.end is not None:
            reason, failure, checkpoint = log.end
            if checkpoint is not None:
                with checkpoint.as_directory() as d:
                    for name in (M.STATE, *ARTIFACTS):
                        if (Path(d) / log.folder / name).exists():
                            self.client.log_artifact(log.run_id, str(Path(d) / log.folder / name))
            if failure:
                self.client.set_tag(log.run_id, R.FAILURE, failure[:5000])
            self.client.set_tag(log.run_id, R.STOP_REASON, reason)
            self.client.set_terminated(log.run_id, status=R.STATUS[reason])
            log.end = None

    def _sync(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._retry_at:
            return
        for log in self._all():
            if log.run_id is None or log.metrics or log.tags or log.end is not None:
                try:
                    self._write(log)
                except TRACKING_ERRORS as e:
                    if self._down is None:
                        print(f"warning: MLflow at {self.uri} {store_problem(e, self.uri)}; trials go on "
                              f"training, their updates are queued and retried every {self.RETRY_S:g} s",
                              file=sys.stderr, flush=True)
                    self._down, self._retry_at = store_problem(e, self.uri), time.monotonic() + self.RETRY_S
                    return
        if self._down is not None:
            print(f"MLflow at {self.uri} is reachable again: queued updates written", file=sys.stderr, flush=True)
            self._down = None

    @_timed
    def on_trial_start(self, iteration, trials, trial, **info):
        self._log(trial)
        self._sync()

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info):
        node = result.get(NODE_ID)
        reset = result.get(STATE_RESET) and not getattr(trial, "_reset_said", False)
        if reset:   # said once, on the console and on its runs
            print(f"warning: trial {trial.trial_id}: {result[STATE_RESET]}", file=sys.stderr, flush=True)
            trial._reset_said = True
        for log in self._log(trial):   # a replayed result (iabf/tune.py) fills epochs this run lacks
            if reset:   # its run continues; the epochs it had are not logged again
                log.tags[STATE_RESET] = str(result[STATE_RESET])[:5000]
            for key in R.STOPS:   # the study stops for it (console.StopLines); the run says why
                if key in result:
                    log.tags[R.INTERRUPTION] = str(result[key])[:5000]
            if node and not result.get(REPLAYED) and (not log.nodes or log.nodes[-1] != node):
                log.nodes.append(node)
                log.tags.update({NODE_ID: node, HOSTNAME: str(result.get(HOSTNAME, "")), R.NODE_IDS: ",".join(log.nodes)})
            mine = {k[len(log.prefix):]: v for k, v in result.items() if k.startswith(log.prefix)}
            epoch = int(mine.get(M.EPOCH, 0))
            if epoch > log.epoch:
                now = int(time.time() * 1000)
                log.metrics += [Metric(k, float(v), now, epoch) for k, v in mine.items()
                                if k.split("/")[0] in ("train", "val", "test", "best", "sys") or k == M.EPOCH
                                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
                log.epoch = epoch
        self._sync()

    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info):
        reason, failure = end_of(trial)
        for log in self._log(trial):
            log.end = (reason, failure, trial.checkpoint if reason == R.COMPLETED else None)
        self._sync()

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info):
        for log in self._log(trial):
            log.end = (*end_of(trial, error=True), None)
        self._sync()

    @_timed
    def on_experiment_end(self, trials, **info):
        self._sync(force=True)

    def flush(self, timeout: float) -> int:
        """At the end of a study: keep retrying queued updates for up to `timeout` seconds.
        Returns how many are left unwritten."""
        deadline = time.monotonic() + timeout
        while self.unlogged() and time.monotonic() < deadline:
            time.sleep(min(self.RETRY_S, max(0.0, deadline - time.monotonic())))
            self._sync(force=True)
        return self.unlogged()
