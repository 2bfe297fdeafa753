"""The MLflow store a study writes: its URI checked before anything starts, a sqlite store created once under a
lock, and a failed write said in words. Reading a store (a report's) is iabf/record.py's `check_store`."""
from __future__ import annotations

import os
import time
from pathlib import Path

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from iabf import record as R
from iabf.storage import room

TRACKING_ERRORS = (MlflowException, requests.RequestException, OSError)   # what a lost server raises
RESUME_WRITES = ("--resume writes what the store did not take: the runs of the trials that ended meanwhile from "
                 "Tune's record of them, the others' epochs as they go on, every epoch once")


def store_problem(e: BaseException, uri: str) -> str:
    """What a failed write to the store says, in words: a full disk under a sqlite store named as such, with
    the room its folder has; anything else as the store being unreachable."""
    text = f"{type(e).__name__}: {e}"
    if R.scheme(uri) == "sqlite" and any(s in text for s in ("disk is full", "No space left", "quota exceeded")):
        folder = R.sqlite_file(uri).parent
        return f"cannot write: the disk of its store is full ({folder}: {room(str(folder))})"
    return f"is unreachable ({type(e).__name__})"


def retrying(fn, timeout: float, *args, **kwargs):
    """fn(*args, **kwargs), retried on tracking errors every few seconds for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(*args, **kwargs)
        except TRACKING_ERRORS:
            if time.monotonic() >= deadline:
                raise
            time.sleep(5)


class TrackingError(RuntimeError):
    """A tracking URI that cannot be used; said before any trial starts."""


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def check_uri(uri: str) -> str:
    """Accept sqlite:/// and http(s)://; a server must answer now, a sqlite store must be a database
    (or new) in a folder that can hold it. Nothing is created but the folder (create_store, once
    the study starts, makes the store)."""
    kind = R.scheme(uri)
    if kind in ("http", "https"):
        if problem := R.server_problem(uri):   # the record's check of a server, as a report makes it
            fix = "; start it (mlflow server --host 127.0.0.1 --port 5000) or forward its port"
            raise TrackingError(problem + (fix if "unreachable" in problem else ""))
    elif kind == "sqlite":
        sqlite_path(uri)
    elif kind in ("", "file"):   # MLflow 3 keeps the file store read-only ("maintenance mode")
        raise TrackingError(f"tracking URI {uri!r}: MLflow {mlflow_version()} no longer writes a file store; "
                            f"use sqlite:///PATH/mlflow.db (a new file is created) or http(s)://HOST:PORT")
    else:
        raise TrackingError(f"tracking URI {uri!r} has an unsupported scheme {kind!r}; "
                            f"use sqlite:///PATH.db or http(s)://HOST:PORT")
    return uri


def mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


def sqlite_path(uri: str) -> Path:
    """A sqlite store's file: its folder made, the file checked to be a database (or new)."""
    path = R.sqlite_file(uri)
    try:
        path.resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"tracking URI {uri!r}: cannot make its folder {path.parent} "
                            f"({type(e).__name__}: {e.strerror or e})") from None
    if path.is_dir():
        raise TrackingError(f"tracking URI {uri!r}: {path} is a folder, not a database file")
    if path.exists() and path.stat().st_size and (damage := R.sqlite_damage(path)):
        raise TrackingError(f"tracking URI {uri!r}: {path} {damage}; name a new file, or "
                            f"{R.STORE_DAMAGE_HELP}")
    return path


def create_store(uri: str) -> None:
    """A sqlite store's schema, created (or upgraded) under a lock (<file>.lock) by whichever study
    comes first: two studies started at once on a new store would otherwise both create MLflow's
    tables, and one fail in alembic's migration. A server's store is the server's business."""
    import fcntl

    if not uri.startswith("sqlite:"):
        return
    path = sqlite_path(uri)
    try:
        lock = open(f"{path}.lock", "a")
    except OSError as e:
        raise TrackingError(f"tracking URI {uri!r}: cannot write beside {path} ({type(e).__name__})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # released when the file closes
        try:
            MlflowClient(uri).search_experiments(max_results=1)   # creates or upgrades the schema
        except MlflowException as e:
            raise TrackingError(f"tracking URI {uri!r}: {str(e).splitlines()[0][:300]}") from None
