"""Runs and MLflow stores built by hand with known values, for the analysis tests."""

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from analysis.report import main as report_main
from iabf.config import Config
from studies.tracking import config_hash

def trial(method, eps, test, val=None, seed=0, lam=0.01, dataset="mnist", stop="completed"):
    cfg = Config(dataset=dataset, method=method, eps=eps, lam=lam if method == "iabf" else 0.01, seed=seed)
    return {"dataset": dataset, "bits": cfg.bits, "method": method, "eps": eps,
            "lam": lam if method == "iabf" else np.nan, "K": 5, "seed": seed, "stop_reason": stop,
            "val": test if val is None else val, "test": test, "run_id": f"{method}{eps}{lam}{seed}",
            "config_hash": config_hash(cfg.to_dict()), "param.lam": cfg.lam}


@pytest.fixture
def store(tmp_path):
    """A real MLflow store written through the client, as studies/tracking.py writes it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("known")
    parent = client.create_run(exp, tags={"study": "known"}).info.run_id
    png = tmp_path / "markov_chain.png"
    Image.fromarray((np.random.default_rng(0).random((30, 30)) * 255).astype(np.uint8)).save(png)
    specs = [("necst", 0.1, None, 15.0, "completed"), ("abf", 0.1, None, 14.0, "completed"),
             ("iabf", 0.1, 0.1, 13.5, "completed"), ("iabf", 0.1, 0.01, 13.0, "completed"),
             ("iabf", 0.1, 0.001, 99.0, "early_stopped"), ("necst", 0.2, None, 22.0, "failed")]
    for method, eps, lam, value, reason in specs:
        cfg = Config(dataset="mnist", method=method, eps=eps, lam=lam or 0.01)
        run = client.create_run(exp, run_name=f"{method}-{lam}", tags={
            "mlflow.parentRunId": parent, "trial_id": f"t{len(specs)}{method}{lam}", "stop_reason": reason,
            "config_hash": config_hash(cfg.to_dict())}).info.run_id
        client.log_batch(run, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()],
                         metrics=[Metric("val/distortion", value + 5 - e, 0, e) for e in (1, 2, 3)] +
                                 ([Metric("best/val_distortion", value + 2, 0, 3), Metric("test/distortion", value, 0, 3)]
                                  if reason == "completed" else []))
        if reason == "completed":
            client.log_artifact(run, str(png))
    return uri


def planned_store(tmp_path, arms, runs, confirm: bool | None = None):
    """A study whose parent run logged the arms it planned (as studies/tracking.py does) and a budget;
    runs: (arm/method, eps, test) of completed search runs, none with Markov-chain samples."""
    uri = f"sqlite:///{tmp_path / 'planned.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("planned")
    parent = client.create_run(exp, tags={"study": "planned"}).info.run_id
    client.log_batch(parent, params=[*([Param("confirm", str(confirm))] if confirm is not None else []),
                                     Param("arms", str(arms)), Param("fixed.epochs", "3"),
                                     Param("fixed.data_dir", "/home/someone/data"),
                                     Param("by_dataset.mnist.max_train_examples", "500")])
    for method, eps, test in runs:
        cfg = Config(dataset="mnist", method=method, eps=eps)
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial_id": f"{method}{eps}",
                                           "stop_reason": "completed", "phase": "search", "arm": method,
                                           "config_hash": config_hash(cfg.to_dict())}).info.run_id
        client.log_batch(run, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()],
                         metrics=[Metric("best/val_distortion", test, 0, 3), Metric("test/distortion", test, 0, 3)])
    return uri


def report_error(tmp_path, capsys, *args):
    capsys.readouterr()                 # what came before (MLflow creating a test store) is not the report's
    rc = report_main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err
