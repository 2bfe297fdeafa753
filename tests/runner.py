"""Running a study as a user would (studies/ablation.py in a subprocess: a real local Ray, a real
MLflow store) and reading MLflow back: what the end-to-end study tests share."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "studies" / "ablation.py"


def template_store() -> Path:
    """A sqlite store with MLflow's schema made, once per MLflow version and machine: making the schema
    takes seconds, and the study tests would pay it ~40 times (test_study.py and test_study_errors.py
    make new stores for real, two at once included)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.gettempdir()) / f"iabf-tests-store-mlflow{mlflow.__version__}.db"
    if not path.exists():
        part = path.with_suffix(f".{os.getpid()}.part")
        MlflowClient(f"sqlite:///{part}").search_experiments()   # makes the schema and the default experiment
        os.replace(part, path)                                    # whole, even with another worker at it
    return path


def store(folder: Path) -> str:
    """The URI of folder/mlflow.db, a copy of template_store() unless it is there: a test that polls the store
    while its study's driver starts must not make the schema at the same moment as the driver (alembic's
    'Online migration expected to match one row' in one of them)."""
    if not (folder / "mlflow.db").exists():
        shutil.copyfile(template_store(), folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def study(tmp_path, *args, uri=None, wait=True, prefix=(), new_store=False):
    """studies/ablation.py with these arguments (storage and store in tmp_path), run through `prefix` (a command
    that runs another, such as tests/procs.small_disk's). The default store starts as a copy of
    template_store() unless `new_store` (a test that a refused study writes no store) or one is there."""
    if uri is None:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if new_store else store(tmp_path)
    cmd = [*prefix, sys.executable, str(SCRIPT), "--storage", str(tmp_path / "results"), "--chain-steps", "20",
           "--tracking-uri", uri, *args]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def runs_of(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "trial_id" not in r.data.tags]
    children = [r for r in runs if "trial_id" in r.data.tags]
    return parents, children


def space(tmp_path, **over):
    d = {"study": "t", "dataset": "digits", "fixed": {"epochs": 3, "K": 2}, "seeds": [0],
         "resources": {"cpu": 1}, **over}
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def wait_for(client, name: str, done, timeout: float = 300) -> None:
    """Poll MLflow until done(child runs) holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            _, children = runs_of(client, name)
        except Exception:
            continue
        if done(children):
            return
    pytest.fail(f"study {name}: condition not reached in {timeout} s")


def completed(runs, phase=None):
    return [r for r in runs if r.data.tags.get("stop_reason") == "completed" and phase in (None, r.data.tags["phase"])]


def driver_processes(driver_pid: int, *names: str) -> list:
    """The processes under a study's driver (its local Ray: the GCS, the raylet and the workers it starts)
    whose command line holds one of `names`."""
    import psutil

    try:
        family = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in family:
        try:
            if any(name in " ".join(p.cmdline()) for name in names):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def trial_workers(driver_pid: int) -> list:
    """The Ray worker processes running trials under this driver."""
    return driver_processes(driver_pid, "ray::ImplicitFunc")


def kill_driver(proc: subprocess.Popen) -> str:
    """SIGKILL a study's driver (as a crash or the OOM killer does: nothing cleaned up) and wait until its
    local Ray, which the driver started and which ends with it, is gone: its GCS, raylet and trial
    workers. (Ray's dashboard and runtime-env agents notice later, up to a minute or so, and end too.)
    Returns the driver's output."""
    import psutil

    family = driver_processes(proc.pid, "gcs_server", "raylet", "ray::ImplicitFunc")
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"the killed driver's local Ray is still running: {alive}"
    return out
