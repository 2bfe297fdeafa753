"""The study's record kept where it outlives the cluster: on a study whose --storage is a URI
(s3://bucket/prefix), MLflow's artifacts go straight there (the experiment's artifact location), and when
the study ends, however it ends, a consistent copy of the MLflow store goes there too:

    <storage>/mlflow/mlflow.db                    the whole store: every run, parameter, metric and tag
    <storage>/mlflow/artifacts/<study>/<run>/...  every run's artifacts (checkpoints, figures, the report)

`ray down` then takes nothing with the head's disk: `analysis.report --tracking-uri sqlite:///mlflow.db`
on a copy of that file reads every run, and each run's artifacts from the storage.

The copy is SQLite's online backup (a snapshot consistent with itself while the server writes), never a
file copy of a live database. The store's file is the sqlite URI's, or, behind a tracking server, the one
cluster/mlflow_server.sh records for its URL (<MLFLOW_DIR>/server*.json, on the machine that runs both).
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from pathlib import Path

from iabf import record as R
from iabf.storage import copy

SERVER_FILES = "server*.json"   # by cluster/mlflow_server.sh, one per server: {"url": ..., "store": <its sqlite file>}


def durable(storage: str) -> bool:
    """Whether the storage outlives the cluster's disks (a URI: s3://, gs://, ...)."""
    return "://" in storage and not storage.startswith("file://")


def artifact_location(storage: str, study: str) -> str | None:
    """Where a new experiment keeps its runs' artifacts: beside the study's results on a durable storage,
    else MLflow's default (None)."""
    return f"{storage.rstrip('/')}/{R.ARTIFACT_ROOT}/{study}" if durable(storage) else None


def store_file(uri: str) -> Path | None:
    """The sqlite file behind a tracking URI, where this machine has it: the URI's own, or the store of the
    tracking server cluster/mlflow_server.sh started here for that URL; None otherwise."""
    if R.scheme(uri) == "sqlite":
        return R.sqlite_file(uri)
    for server in sorted(Path(os.environ.get("MLFLOW_DIR", "~/mlflow")).expanduser().glob(SERVER_FILES)):
        with contextlib.suppress(OSError, ValueError, AttributeError, KeyError, TypeError):
            said = json.loads(server.read_text())
            if said["url"].rstrip("/") == uri.rstrip("/") and Path(said["store"]).is_file():
                return Path(said["store"])
    return None


def keep(uri: str, storage: str) -> str:
    """Copy the store behind `uri` to <storage>/mlflow/mlflow.db, consistently; the line that says where
    the record is (or why it could not be kept there)."""
    where, artifacts = f"{storage.rstrip('/')}/{R.STORE_COPY}", f"{storage.rstrip('/')}/{R.ARTIFACT_ROOT}"
    path = store_file(uri)
    if path is None:
        return (f"warning: the MLflow store behind {uri} is not on this machine, so no copy of it went to {where}: "
                f"copy it before the cluster goes (its artifacts are in {artifacts})")
    with tempfile.TemporaryDirectory() as d:
        snapshot = Path(d) / "mlflow.db"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)) as src, \
                    contextlib.closing(sqlite3.connect(snapshot)) as dst:
                src.backup(dst)   # SQLite's online backup: one consistent snapshot, taken while others write
            copy(str(snapshot), where)
        except (sqlite3.Error, OSError) as e:
            return f"warning: the MLflow store {path} could not be copied to {where} ({' '.join(str(e).split())[:300]})"
    return (f"the study's record outlives the cluster: {where} (a copy of {path}, every run and metric) and "
            f"{artifacts} (their artifacts)")
