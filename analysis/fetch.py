"""MLflow -> a tidy DataFrame: one row per trial (one configuration at one seed)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from iabf import metrics as M
from iabf import record as R
from iabf.config import FIELD_TYPES, Config

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # a plan's download is no console news
COLUMNS = ["dataset", "bits", "method", "eps", "channel", "lam", "K", "seed", R.STOP_REASON, "val", "test",
           "run_id", R.CONFIG_HASH, "run_name", R.FAILURE, R.PHASE, R.CELL, R.ARM, R.UID, R.CONFIRMS, "epochs"]


class FetchError(R.StoreError):
    """The study or run asked for is not in the tracking store."""


def _typed(params: dict) -> dict:
    conv = {"int": int, "float": float, "bool": lambda s: s == "True", "str": str}
    return {k: conv[FIELD_TYPES[k]](v) for k, v in params.items() if k in FIELD_TYPES}


def parent_run(client: MlflowClient, study: str, parent: str | None = None):
    exp = client.get_experiment_by_name(study)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise FetchError(f"no study {study!r} in the tracking store; studies there: {', '.join(names) or 'none'}")
    if parent:
        return exp, client.get_run(parent)
    parents = [r for r in client.search_runs([exp.experiment_id], max_results=10_000, order_by=["start_time DESC"])
               if R.TRIAL_ID not in r.data.tags]
    if not parents:
        raise FetchError(f"study {study!r} has no study (parent) run")
    return exp, parents[0]


def fetch_runs(tracking_uri: str, study: str, parent: str | None = None, include_unfinished: bool = False) -> pd.DataFrame:
    """The trials of a study's latest run (or of `parent`). Early-stopped, failed and unfinished
    trials are left out unless include_unfinished: a table reports finished trials only. Each row
    carries its cell's values as `cell.<axis>` columns, for the axes the study recorded (cell_axes):
    what every table is keyed on."""
    client = MlflowClient(tracking_uri)
    exp, par = parent_run(client, study, parent)
    axes = cell_axes(client, par)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{par.info.run_id}'",
                              max_results=50_000)
    rows = []
    for r in runs:
        cfg = Config.from_dict(_typed(r.data.params))
        tags = r.data.tags
        cell = R.cell_of(cfg, None if axes == list(R.DEFAULT_CELL) else axes)
        rows.append({"dataset": cfg.dataset, "bits": cfg.bits, "method": cfg.method, "eps": cfg.eval_eps,
                     "channel": cfg.channel,
                     "lam": cfg.lam if cfg.method == "iabf" else float("nan"), "K": cfg.K, "seed": cfg.seed,
                     R.STOP_REASON: r.data.tags.get(R.STOP_REASON, "running"),
                     "val": r.data.metrics.get(M.BEST_VAL_DISTORTION, float("nan")),
                     "test": r.data.metrics.get(M.TEST_DISTORTION, float("nan")),
                     "run_id": r.info.run_id, R.CONFIG_HASH: r.data.tags.get(R.CONFIG_HASH, ""),
                     "run_name": r.info.run_name, R.FAILURE: r.data.tags.get(R.FAILURE, ""),
                     # the protocol's labels (studies/plan.py); a run from before them is a search run
                     # of its own cell, in the arm of its method
                     R.PHASE: tags.get(R.PHASE, R.SEARCH), R.ARM: tags.get(R.ARM, cfg.method),
                     R.CELL: tags.get(R.CELL, R.cell_label(cell)),
                     R.UID: tags.get(R.UID, ""), R.CONFIRMS: tags.get(R.CONFIRMS, ""),
                     "epochs": r.data.metrics.get(M.EPOCH, 0.0),
                     **{f"{R.CELL_PREFIX}{k}": v for k, v in cell.items()},
                     **{R.PARAM + k: v for k, v in cfg.to_dict().items()},
                     **{R.METRIC_OF + k: v for k, v in r.data.metrics.items()}})
    df = pd.DataFrame(rows, columns=None if rows else [*COLUMNS, *(R.CELL_PREFIX + a for a in axes)])
    if not include_unfinished and len(df):
        df = df[df[R.STOP_REASON] == R.COMPLETED]
    return df.sort_values(["dataset", "method", "eps", "arm", "lam", "seed"], na_position="first").reset_index(drop=True)


def cell_axes(client: MlflowClient, par) -> list[str]:
    """The cell axes a study recorded on its parent run: its plan's `axes`, else the keys of its
    plan's cell values, else its `cells` parameter; DEFAULT_CELL for a study that named none (or
    one from before plans)."""
    plan = load_plan(client, par)
    if plan and plan.get("axes"):
        return list(plan["axes"])
    if plan and plan.get("cells") and isinstance(plan["cells"][0].get("values"), dict):
        return list(plan["cells"][0]["values"])
    return R.axes_of(par.data.params.get(R.CELLS)) or list(R.DEFAULT_CELL)


def load_plan(client: MlflowClient, par) -> dict | None:
    """The parent run's plan (studies/plan.record), through the client of the study's own tracking
    URI (a server's proxied artifacts included); None for a study from before plans."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(par.info.run_id, R.PLAN_ARTIFACT, d)
            return json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):   # a study from before plans: no plan to show
            return None


def table_runs(trials: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The runs a table reports: the confirmation runs when the study has them (each cell and arm
    then has all its seeds), else every completed run (search results). Returns (runs, confirmed)."""
    confirmed = trials[trials[R.PHASE] == R.CONFIRM]
    return (confirmed, True) if len(confirmed) else (trials, False)


def study_plan(tracking_uri: str, study: str, parent: str | None = None) -> dict | None:
    """The plan the study logged when it started (studies/plan.record), if it did."""
    client = MlflowClient(tracking_uri)
    _, par = parent_run(client, study, parent)
    return load_plan(client, par)


def recorded_params(tracking_uri: str, study: str, parent: str | None = None) -> dict:
    """The parameters the study logged on its parent run (studies/tracking.start_study): searcher,
    arms, fixed.<key>, by_dataset.<dataset>.<key>, ...; values as MLflow stores them (text)."""
    _, par = parent_run(MlflowClient(tracking_uri), study, parent)
    return dict(par.data.params)


def chooser(params: dict) -> dict:
    """The metric and mode the study chose its configurations by (its parent run's parameters), for
    analysis.entries.select_cells: a table chooses as its study did."""
    return {"metric": params.get(R.METRIC, M.VAL_DISTORTION), "mode": params.get(R.MODE, "min")}


def planned_arms(params: dict) -> list[str] | None:
    """The arms a study planned (its `arms` parameter, a Python list as text); None if not logged."""
    import ast

    try:
        arms = ast.literal_eval(params.get(R.ARMS, ""))
    except (ValueError, SyntaxError):
        return None
    return [str(a) for a in arms] if isinstance(arms, list) else None


def display_uri(uri: str) -> str:
    """A tracking URI as a report may show it: a local store by its file name only (a committed
    report names no machine's paths), a server as it is."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        scheme = uri.split(":", 1)[0] if ":" in uri else "file"
        return f"{scheme} store {uri.rstrip('/').rsplit('/', 1)[-1]}"
    return uri


def metric_history(tracking_uri: str, run_ids, key: str = M.VAL_DISTORTION) -> pd.DataFrame:
    """Per-epoch values of `key` for runs: columns run_id, step, value."""
    client = MlflowClient(tracking_uri)
    rows = [{"run_id": rid, "step": m.step, "value": m.value}
            for rid in run_ids for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])
