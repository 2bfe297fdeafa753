"""The study's record where a cluster's disks fail it. A study whose storage is S3 (moto's server on
loopback, tests/procs.S3): the study's MLflow store is deleted afterwards; the copy the study left on S3
is fetched as a user would after `ray down`, and the report, `analysis.best` and a checkpoint are rebuilt
from it, every artifact read from S3. A store whose disk fills: named, and --resume writes what it missed."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import s3, small_disk  # noqa: F401  (s3: a fixture)
from runner import runs_of, study, template_store

from iabf import metrics as M

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_study_on_s3_storage_leaves_its_store_and_artifacts_there(tmp_path, s3):  # noqa: F811
    out = study(tmp_path, "--smoke", "--storage", f"s3://{s3.bucket}/iabf")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (f"the study's record outlives the cluster: s3://{s3.bucket}/iabf/mlflow/mlflow.db (a copy of "
            f"{tmp_path / 'mlflow.db'}") in out.stdout, out.stdout[-2000:]
    keys = s3.keys("iabf/")
    assert "iabf/mlflow/mlflow.db" in keys
    assert [k for k in keys if k.startswith("iabf/mlflow/artifacts/quick-smoke/") and k.endswith("/checkpoint.pt")]
    assert [k for k in keys if k.startswith("iabf/quick-smoke-") and "/state/" in k]   # Tune's and the trials' files

    (tmp_path / "mlflow.db").unlink()                       # the head's disk, gone with `ray down`
    (tmp_path / "copy").mkdir()
    s3.client().download_file(s3.bucket, "iabf/mlflow/mlflow.db", str(tmp_path / "copy" / "mlflow.db"))
    uri = f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}"
    report = subprocess.run([sys.executable, "-m", "analysis.report", "--tracking-uri", uri, "--study", "quick-smoke",
                             "--out", str(tmp_path / "report")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "table1.md").is_file()
    assert list((tmp_path / "report").glob("fig3_markov_chain_*.png"))   # drawn from the runs' artifacts, on S3
    best = subprocess.run([sys.executable, "-m", "analysis.best", "--study", "quick-smoke", "--tracking-uri", uri,
                           "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert best.returncode == 0, best.stderr[-3000:]
    run = json.loads(best.stdout)["entries"][0]["runs"][0]
    client = MlflowClient(uri)
    assert client.get_run(run["run_id"]).info.artifact_uri.startswith(f"s3://{s3.bucket}/iabf/mlflow/artifacts/")
    path = client.download_artifacts(run["run_id"], "checkpoint.pt", str(tmp_path))
    from iabf.train import load_models
    cfg, _, _ = load_models(path)
    assert cfg.dataset == "digits"


def test_a_store_whose_disk_fills_is_named_and_resume_writes_what_it_did_not_take(tmp_path):
    """The MLflow store on a filesystem a little larger than its empty schema: the study's trials train on,
    and the study ends in one line that names the full disk, its room and what --resume will do. Given room,
    --resume writes every run's epochs (once), its end and its checkpoint from Tune's record, and exits 0."""
    store = tmp_path / "store"
    with small_disk(store, "980k") as ns:
        subprocess.run([*ns, "cp", str(template_store()), str(store / "mlflow.db")], check=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        out = study(tmp_path, "--smoke", "--tracking-grace", "2", uri=uri, prefix=ns)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout[-2000:] + out.stderr[-3000:]
        assert re.search(rf"MLflow at {re.escape(uri)} cannot write: the disk of its store is full \({re.escape(str(store))}: "
                         r"[\d.]+ [KM]?B free of [\d.]+ KB\); .*--resume writes what the store did not take",
                         out.stderr), out.stderr[-3000:]
        subprocess.run([*ns, "mount", "-o", "remount,size=8m", str(store)], check=True)   # room, at last
        out = study(tmp_path, "--smoke", "--resume", uri=uri, prefix=ns)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert re.search(r"\d+ runs of trials that had ended without their record", out.stdout), out.stdout[-3000:]
        subprocess.run([*ns, "cp", str(store / "mlflow.db"), str(tmp_path / "read.db")], check=True)   # to read it here
    client = MlflowClient(f"sqlite:///{tmp_path / 'read.db'}")
    _, runs = runs_of(client, "quick-smoke")
    assert len(runs) == 3 and all(r.data.tags.get("stop_reason") == "completed" for r in runs)
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == [1, 2]
    confirm = [r for r in runs if r.data.tags["phase"] == "confirm"]
    assert [a.path for a in client.list_artifacts(confirm[0].info.run_id) if a.path == "checkpoint.pt"]
