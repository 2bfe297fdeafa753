"""A study whose storage is S3 (moto's server on loopback, tests/procs.S3): its record outlives the
machine that ran it. The study's MLflow store is deleted afterwards; the copy the study left on S3 is
fetched as a user would after `ray down`, and the report, `analysis.best` and a checkpoint are rebuilt
from it, every artifact read from S3."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import s3  # noqa: F401  (a fixture)
from runner import study

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
