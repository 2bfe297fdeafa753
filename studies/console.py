"""What a study prints, and what it only logs.

The console gets a short view: the line saying which Ray the study runs on, Ray Tune's own
CLIReporter as one status table (the parameters that differ between trials as columns, the
metric, refreshed at most once a minute), one line for each trial that ASHA stops or that fails,
and the summary. Everything else that Ray, Ray Tune and MLflow say goes to the study's log file,
`<results>/<study>-<time>/study.log`. `--verbose` gives Ray's own full output back instead.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

from ray import tune

from iabf import metrics as M
from iabf.record import COMPLETED, DEFAULT_CELL, EARLY_STOPPED, FAILED, INTERRUPTED, STOP_REASONS, STOPS
from iabf.storage import NO_ROOM
from studies.cluster import launch_failures
from studies.signals import request_stop
from studies.tracking import end_of

LOGGERS = ("ray", "mlflow", "alembic", "optuna")
LOG_NAME = "study.log"


def capture_logs() -> logging.handlers.MemoryHandler:
    """From now on, Ray's, MLflow's and Optuna's log records are held back, not printed; `to_file`
    writes them (and all later ones) to the study's log once the study really starts, so a study
    refused at the start leaves no log behind."""
    import optuna  # noqa: F401  (on import Optuna gives its logger a console handler of its own: replaced below)

    held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    held.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in LOGGERS:
        log = logging.getLogger(name)
        log.handlers[:] = [held]
        log.propagate = False
    return held


class StudyLog(logging.FileHandler):
    """The study's log file. A line it cannot write is lost, not a traceback on the console (logging's
    default): said once, unless the storage is full, which the study says itself when a trial finds it so."""

    said = False

    def handleError(self, record):
        e = sys.exc_info()[1]
        if not self.said and not (isinstance(e, OSError) and e.errno in NO_ROOM):
            print(f"warning: the study's log {self.baseFilename} cannot be written ({e}); "
                  f"Ray's and MLflow's messages are lost from here", file=sys.stderr, flush=True)
        self.said = True


def to_file(held: logging.handlers.MemoryHandler, experiment_dir: str | Path) -> Path:
    path = Path(experiment_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = StudyLog(path)
    handler.setFormatter(held.formatter)
    held.setTarget(handler)
    held.flush()
    for name in LOGGERS:
        logging.getLogger(name).handlers[:] = [handler]
    return path


def reporter(columns: dict[str, str], metric: str) -> tune.CLIReporter:
    """Ray Tune's CLIReporter: one table, a column per parameter that varies, the metric and epoch.
    It is Ray's classic output engine, which the new one replaces unless RAY_AIR_NEW_OUTPUT=0."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    return tune.CLIReporter(parameter_columns=columns, metric_columns={metric: metric, M.EPOCH: "epoch"},
                            max_report_frequency=60, max_column_length=24, sort_by_metric=False)


class StopLines(tune.Callback):
    """One console line for each trial that ASHA stops early or that fails; a trial that found no room
    on the storage, or no study folder on its node, stops the study (studies/signals.py), which says so
    once, at its end."""

    def __init__(self, columns: dict[str, str], metric: str = M.VAL_DISTORTION):
        self.columns, self.metric = columns, metric   # the study's: what ASHA judged the stopped trial by

    def describe(self, trial) -> str:
        flat = _flatten(trial.config)
        shown = " ".join(f"{name}={flat[key]}" for key, name in self.columns.items() if key in flat)
        return f"trial {trial.trial_id} ({shown})"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for key, fix in STOPS.items():   # a storage full, or not on the trial's node
            if key in result:
                request_stop(result[key], fix)

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason, failure = end_of(trial)
        last = trial.last_result or {}
        if reason == EARLY_STOPPED:
            print(f"{self.describe(trial)}: stopped by ASHA after epoch {last.get(M.EPOCH, '?')} "
                  f"({(metric := getattr(self, 'metric', M.VAL_DISTORTION))} {last.get(metric, float('nan')):.4g})",
                  flush=True)
        elif reason == FAILED:
            print(f"{self.describe(trial)}: failed: {failure}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{self.describe(trial)}: failed: {end_of(trial, error=True)[1]} (error file: {trial.error_file})",
              file=sys.stdout, flush=True)


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


class LaunchLines(tune.Callback):
    """While trials wait for resources on a cluster: what the autoscaler could not launch (a quota, a refused
    role, no capacity), one line per node type and reason, within seconds of it, where Ray would leave the
    study waiting in silence (its own report is in `ray status` and the study's log only)."""

    EVERY_S = 10.0

    def __init__(self):
        self._next, self._said = 0.0, set()

    def __getstate__(self):   # Tune pickles its callbacks with the study: what was said is said again on resume
        return {}

    def __setstate__(self, state):
        self.__init__()

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() < self._next or not any(t.status == "PENDING" for t in trials):
            return
        self._next = time.monotonic() + self.EVERY_S
        for kind, why in launch_failures().items():
            if (kind, why) not in self._said:
                self._said.add((kind, why))
                print(f"warning: the cluster's autoscaler could not launch a {kind!r} node ({why}); the trials that "
                      f"need one wait. See the node type in the cluster file, the account's quota for it and the "
                      f"head's rights (docs/cluster.md)", file=sys.stderr, flush=True)


def summarize(study, uri, exp_id, parent, experiment_dir, counts, local: Path) -> None:
    """How the trials ended, the configuration chosen per cell (from the report), where things are."""
    from studies import tracking

    print(f"\nruns (one per trial and seed): "
          f"{', '.join(f'{counts[k]} {k}' for k in (*STOP_REASONS, INTERRUPTED))}"
          f"; {counts['trial_hours']:.3f} trial-hours, {counts['gpu_hours']:.3f} GPU-hours")
    report_dir = local / "report"
    if counts[COMPLETED]:  # the paper's table and figures, also kept on the study's parent run
        import pandas as pd

        from analysis.entries import chosen_by
        from analysis.report import write_report

        written = write_report(uri, study.name, report_dir, parent=parent, quiet=True)
        tracking.log_report(uri, parent, report_dir)
        if "table1.csv" in written:
            entries = pd.read_csv(written["table1.csv"])
            what = "confirmed on every seed" if study.confirm else "search results, no confirmation phase"
            print(f"\nthe configuration chosen per cell and arm by {chosen_by(study.metric, study.mode)} ({what}); "
                  "test distortion:")
            axes = [a for a in (study.cells or DEFAULT_CELL) if a in entries]
            print(entries[[*axes, "arm", "config", "n", "val", "test", "std"]].to_string(index=False))
            cost = pd.read_csv(written["cost.csv"])
            print("\ntrial-epochs per cell: " + "; ".join(
                f"{c.cell}: {c.search_epochs:.0f} search + {c.confirm_epochs:.0f} confirmation "
                f"(full grid without early stopping: {c.full_grid_epochs:.0f})" for c in cost.itertuples()))
        print(f"\nTable 1, reproduction report and figures: {report_dir} (and on the parent run in MLflow)")
    print(f"MLflow: {uri}  experiment {study.name!r}, parent run {parent}")
    if uri.startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {uri}, then {tracking.ui_link('http://127.0.0.1:5000', exp_id)}")
    else:
        print(f"  browse: {tracking.ui_link(uri, exp_id)}")
    print(f"Ray Tune results: {experiment_dir}")
