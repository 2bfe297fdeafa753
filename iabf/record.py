"""A study's record: what it leaves in MLflow, and so everything that reads it back needs. studies/
writes it (tracking.py), analysis/ reads it (fetch.py, entries.py); both import it from here and nowhere
else (tests/test_record_names.py finds a name of it typed elsewhere). No torch, no Ray (MLflow only inside the store checks): a report rebuilds from the store alone.

- every trial's run is tagged with LABELS: its phase (SEARCH or CONFIRM), its cell (cell_label), its
  arm, its uid (fixed by what the trial is) and, on a confirmation, the uid of the search trial it
  confirms; and, once it ends, STOP_REASON (one of STOP_REASONS) with a FAILURE or an INTERRUPTION;
- a trial (iabf/tune.py) reports, besides its metrics, where it ran (NODE_ID, HOSTNAME), a reset state
  (STATE_RESET), a full storage (STORAGE_FULL), a
  storage its node does not see (STORAGE_UNREACHED) and replayed epochs (REPLAYED); a stacked trial is one
  run per seed (`parts`);
- the study's parent run keeps PLAN_ARTIFACT (studies/plan.py's `record`): whether it confirms, its
  cell axes, per cell its values and planned counts;
- a cell is DEFAULT_CELL (dataset, channel, bits, test eps) unless the study names its own axes; a
  frame of runs has a CELL_PREFIX column per axis;
- one rule chooses a group's configuration (`choose`), for the study and for its table.
"""
from __future__ import annotations

import ast
import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from . import metrics as M
from .config import Config, seed_configs

# --- the tags on every trial's run -----------------------------------------------------------------
PHASE, CELL, ARM, UID, CONFIRMS = "phase", "cell", "arm", "uid", "confirms"
LABELS = (PHASE, CELL, ARM, UID, CONFIRMS)    # a trial's parameters that are labels, not Config fields
SEARCH, CONFIRM = "search", "confirm"          # the values of PHASE
# every trial run's other tags; the parent run's own (besides TAG_EXPERIMENT_DIR, studies/tracking.py) are STUDY
# and GIT_COMMIT
STUDY, TRIAL_ID, SEED, CONFIG_HASH, GIT_COMMIT, NODE_IDS = "study", "trial_id", "seed", "config_hash", "git_commit", "node_ids"
# the parent run's parameters that the analysis reads back (studies/tracking.study_params writes them all)
METRIC, MODE, ARMS, CELLS, CONFIRMING, ADAPTIVE = "metric", "mode", "arms", "cells", "confirm", "adaptive"
PARAM, METRIC_OF = "param.", "metric."          # a frame's columns (analysis/fetch.py): param.<field>, metric.<name>
STOP_REASON, FAILURE, INTERRUPTION = "stop_reason", "failure", "interruption"
COMPLETED, EARLY_STOPPED, FAILED = STOP_REASONS = ("completed", "early_stopped", "failed")
INTERRUPTED = "interrupted"                    # a run with no STOP_REASON at the study's end: --resume reopens it
STATUS = {COMPLETED: "FINISHED", EARLY_STOPPED: "KILLED", FAILED: "FAILED"}   # MLflow's run status per reason

# Config fields that are not a trial's configuration: its seed (the seeds are repeats), how seeds are
# stacked, and where and how it runs. Two runs that differ only in these ran the same configuration.
NOT_CONFIG = ("seed", "stack", "data_dir", "device", "download", "compile")

# --- what a trial reports besides its metrics (iabf/tune.py), read by the driver (studies/) ----------
REPLAYED = "replayed"          # a result reported again on resume, not a new epoch
NODE_ID, HOSTNAME = "node_id", "hostname"   # in every result: the Ray node and host that trained it; tags
STATE_RESET = "state_reset"    # in every result of a trial whose state file could not be read; a tag
STORAGE_FULL = "storage_full"  # a trial's last result when the study's storage has no room for its state
STORAGE_UNREACHED = "storage_unreached"   # ... when its node does not see the study's folder (studies/reach.py)
STOPS = {STORAGE_FULL: "make room on the storage",   # what a trial reports to stop the study, and the fix
         STORAGE_UNREACHED: "give every node the study's storage (mount it where the head has it)"}
ARTIFACTS = ("config.json", "reconstructions.png", "markov_chain.png")   # with M.STATE in a confirmation's last checkpoint, and on its run


def state_key(params: dict, trial_id: str) -> str:
    """The name of a trial's own state file (iabf.tune.TrialState): its UID, fixed by what the trial is, so that a
    trial Tune suggests again after a resume (and ASHA's rebuilt rungs) find it; Tune's id where it has none."""
    return params.get(UID) or trial_id


def config_from_params(params: dict) -> Config:
    """A trial's Config from its parameters: without the study's LABELS; None is a parameter the trial
    leaves at its default (a study names every varying parameter in every trial)."""
    return Config.from_dict({k: v for k, v in params.items() if k not in LABELS and v is not None})


@dataclass
class Part:
    """One seed of a trial, and so one MLflow run: its config, the prefix of its metrics in the trial's
    results and the folder of its checkpoint and artifacts inside each Tune checkpoint. A plain trial
    has one part ("", ""); a stacked one (Config.stack) has one per seed (seed3/..., seed3/)."""
    cfg: Config
    prefix: str
    folder: str


def parts(cfg: Config) -> list[Part]:
    if cfg.stack == 1:
        return [Part(cfg, "", "")]
    return [Part(c, M.seed_key(c.seed, ""), f"seed{c.seed}") for c in seed_configs(cfg)]


# --- the plan and the cells ------------------------------------------------------------------------
PLAN_ARTIFACT = "plan.json"                     # on the study's parent run (studies/plan.py: record)
VARIANT = "variant."                            # the parent run's keys of arm i: variant.<i>.<key>, variant.<i>.search.<key>
DEFAULT_CELL = ("dataset", "channel", "bits", "eps")   # a cell when a study names none (eps: the test eps)
DEFAULT_CELL_TEXT = "dataset, channel, bits, test eps"  # the same, as the parent run records it (and --resume compares)
DEFAULT_CELL_FIELDS = dict(zip(DEFAULT_CELL, ("dataset", "channel", "n_bits", "test_eps")))   # the Config field of each
CELL_PREFIX = "cell."                           # a frame's value of each cell axis: cell.K, cell.flip_budget


def cell_of(cfg, keys: list[str] | None = None) -> dict:
    """The table entry a configuration (an iabf.config.Config) belongs to: by default (dataset, channel,
    bits, test eps); with a study's `cells:`, its values of those fields."""
    if keys is None:
        return {"dataset": cfg.dataset, "channel": cfg.channel, "bits": cfg.bits, "eps": cfg.eval_eps}
    return {k: getattr(cfg, k) for k in keys}


def axes_of(cells_param: str | list | None) -> list[str] | None:
    """A study's cell axes from its parent run's `cells` parameter (a list as text, or the default's
    description): the list, or None for the default cell (DEFAULT_CELL)."""
    if isinstance(cells_param, list):
        return [str(c) for c in cells_param]
    try:
        value = ast.literal_eval(cells_param or "")
    except (ValueError, SyntaxError):
        return None
    return [str(c) for c in value] if isinstance(value, list) and value else None


def value_text(v) -> str:
    """A value as the record and the tables write it: a float in %g (0.001, not 0.0010000), else str."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def cell_label(cell: dict) -> str:
    """digits/bsc/16b/eps0.1 for the default cell; key=value pairs otherwise."""
    if list(cell) == list(DEFAULT_CELL):
        return f"{cell['dataset']}/{cell['channel']}/{cell['bits']}b/eps{cell['eps']:g}"
    return "/".join(f"{k}={value_text(v)}" for k, v in cell.items())


def declared_search(params: dict, name: str, arm: str | None = None) -> tuple[str, list] | None:
    """What a study declared for a searched parameter, from its parent run's parameters: the arm's own
    search (`variant.<i>.search.<name>`, i its place in `arms`) or every arm's (`search.<name>`), e.g.
    "{'loguniform': [0.001, 0.3]}": (distribution, its arguments), or None where it is not recorded (a
    study from before the record kept it)."""
    try:
        arms = ast.literal_eval(params.get("arms", "[]"))
        own = f"{VARIANT}{arms.index(arm)}.search.{name}" if arm in arms else None
        spec = ast.literal_eval(params.get(own, "") or params.get(f"search.{name}", ""))
    except (ValueError, SyntaxError, AttributeError):
        return None
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        return (str(kind), list(args)) if isinstance(args, (list, tuple)) else None
    return None


# --- the one rule that chooses a configuration -----------------------------------------------------

def score_key(metric: str) -> str:
    """The result (and run metric) that scores a trial for the study's `metric`: the best validation
    distortion so far (the model a trial keeps) for val/distortion, else the metric's last value."""
    return M.BEST_VAL_DISTORTION if metric == M.VAL_DISTORTION else metric


def score(result: dict, metric: str) -> float:
    """What chooses a group's configuration (score_key's value), NaN where a trial has none."""
    value = result.get(score_key(metric))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def choose(results: list[dict], mode: str) -> dict | None:
    """The best of a group's search trials: among those that trained longest (ASHA's survivors),
    the best score. results: {"uid", "params", "epoch", "score"}; failed trials have no score."""
    ok = [r for r in results if math.isfinite(r["score"])]
    if not ok:
        return None
    furthest = max(r["epoch"] for r in ok)
    sign = 1 if mode == "min" else -1
    return min((r for r in ok if r["epoch"] == furthest), key=lambda r: sign * r["score"])


# --- the store: checked before anything reads or writes it -----------------------------------------

SQLITE_MAGIC = b"SQLite format 3\x00"
CREDENTIALS_HELP = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or put them in ~/.mlflow/credentials "
                    "(on a cluster made by cluster.yaml or cluster/slurm.sbatch the head's ~/.mlflow/credentials has them)")


STORE_COPY, ARTIFACT_ROOT = "mlflow/mlflow.db", "mlflow/artifacts"   # on a durable storage (studies/archive.py)
STORE_DAMAGE_HELP = (f"restore it from a copy (a study on s3:// storage keeps one: <storage>/{STORE_COPY}), "
                     "or recover what SQLite can: sqlite3 FILE .recover | sqlite3 NEW.db")


class StoreError(LookupError):
    """A tracking store that cannot be read: said in one line before anything is opened."""


def limit_mlflow_retries() -> None:
    """A lost tracking server should cost seconds per attempt, not minutes (MLflow's defaults retry
    7 times with backoff); what the environment sets wins."""
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


def sqlite_file(uri: str) -> Path:
    return Path(uri.split(":///", 1)[-1]).expanduser()


def is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == SQLITE_MAGIC


def sqlite_damage(path: Path) -> str | None:
    """Why an SQLite file is not a whole database (a copy cut short, a disk error), or None. Its header
    alone says nothing of the rest: SQLite's own quick_check reads every page (a second per GB), read-only."""
    import sqlite3

    if not is_sqlite(path):
        return "is not an SQLite database"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            found = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as e:
        return f"is damaged ({e})"
    return None if found == ["ok"] else f"is damaged ({'; '.join(found)[:200]})"


def check_store(uri: str) -> None:
    """A store to read from: a sqlite file that exists and is a database (MLflow's client would create
    an empty one), or a server that answers within seconds (MLflow's client retries for minutes).
    Raises StoreError."""
    limit_mlflow_retries()
    if scheme(uri) == "sqlite":
        path = sqlite_file(uri)
        if not path.is_file():
            raise StoreError(f"no tracking store at {path} (tracking URI {uri!r})")
        if damage := sqlite_damage(path):
            raise StoreError(f"{path} {damage} (tracking URI {uri!r}); {STORE_DAMAGE_HELP}")
    elif scheme(uri) in ("http", "https") and (problem := server_problem(uri)):
        raise StoreError(problem)


def server_problem(uri: str) -> str | None:
    """What keeps a tracking server from being used, in one line (unreachable, or refusing this client), or None."""
    import requests

    try:
        return server_refusal(uri)
    except requests.RequestException as e:
        return f"MLflow tracking server {uri} is unreachable ({type(e).__name__})"


def server_refusal(uri: str) -> str | None:
    """Why a tracking server refuses this client, in one line (None: it answers). MLflow's basic-auth app
    answers 401 to missing or wrong credentials; its host check (--allowed-hosts) or a proxy answers 403.
    The credentials are the ones MLflow's own client sends: its environment variables, else
    ~/.mlflow/credentials. Raises requests.RequestException for a server that does not answer."""
    import requests
    from mlflow.utils.credentials import read_mlflow_creds

    base = uri.rstrip("/")
    creds = read_mlflow_creds()
    auth = (creds.username, creds.password) if creds.username else None
    for path, params in (("/health", None), ("/api/2.0/mlflow/experiments/search", {"max_results": 1})):
        answer = requests.get(base + path, params=params, auth=auth, timeout=10)
        said = " ".join(answer.text.split())[:160]
        if answer.status_code == 401:
            who = f"refused the credentials of user {creds.username!r}" if auth else "asks for credentials and none were given"
            return f"MLflow tracking server {uri} {who} (401); {CREDENTIALS_HELP}"
        if answer.status_code == 403:
            host = base.split("://", 1)[-1].split("/", 1)[0]
            why = (f"its host check does not allow {host!r}: start it with --allowed-hosts {host}" if "host" in said.lower()
                   else f"user {creds.username!r} may not read its experiments" if auth else CREDENTIALS_HELP)
            return f"MLflow tracking server {uri} refused this client (403: {said}); {why}"
        answer.raise_for_status()
    return None
