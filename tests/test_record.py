"""The study's record where a cluster's disks fail it: on S3 (moto's server on loopback, tests/procs.S3),
the artifacts and a whole copy of the store, taken while the store is written; a store whose disk fills,
named, and --resume writing what it missed."""
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from procs import s3, small_disk  # noqa: F401  (s3: a fixture)
from runner import runs_of, store, study, template_store

from iabf import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def test_the_store_and_artifacts_reach_s3_and_the_copy_is_whole_while_the_store_is_written(tmp_path, s3):  # noqa: F811
    """studies/archive.py against moto's S3: a new experiment on an s3:// storage keeps its artifacts there; the
    store's copy, taken while another process keeps writing to the store, is a whole database (SQLite's online
    backup, not a file copy) that reads every run, with its artifacts fetched from S3. (A whole study on S3
    storage, `ray down` and the report rebuilt from what survived: tests/test_ray_up.py.)"""
    from studies import archive

    storage = f"s3://{s3.bucket}/iabf"
    uri = store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("onS3", artifact_location=archive.artifact_location(storage, "onS3"))
    run = client.create_run(exp).info.run_id
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    client.log_artifact(run, str(tmp_path / "checkpoint.pt"))
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom mlflow.tracking import MlflowClient\nc = MlflowClient(sys.argv[1])\n"
        "for i in range(100000):\n    c.log_metric(sys.argv[2], 'm', float(i), step=i)\n"), uri, run], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(client.get_metric_history(run, "m")) < 20 and time.time() < deadline:   # the writer is at it
            time.sleep(0.5)
        line = archive.keep(uri, storage)
    finally:
        writer.kill()
        writer.communicate()
    assert line == (f"the study's record outlives the cluster: {storage}/mlflow/mlflow.db (a copy of {tmp_path / 'mlflow.db'}, "
                    f"every run and metric) and {storage}/mlflow/artifacts (their artifacts)"), line
    assert [k for k in s3.keys("iabf/mlflow/artifacts/onS3/") if k.endswith("/checkpoint.pt")]
    s3.client().download_file(s3.bucket, "iabf/mlflow/mlflow.db", str(tmp_path / "copy.db"))
    from iabf.record import sqlite_damage
    assert sqlite_damage(tmp_path / "copy.db") is None
    copy = MlflowClient(f"sqlite:///{tmp_path / 'copy.db'}")
    assert len(copy.get_metric_history(run, "m")) > 10     # what the writer had written when the copy was taken
    assert copy.get_run(run).info.artifact_uri.startswith(f"{storage}/mlflow/artifacts/onS3/")
    assert Path(copy.download_artifacts(run, "checkpoint.pt", str(tmp_path))).read_bytes() == b"weights"
    assert archive.keep("http://127.0.0.1:9/", storage).startswith("warning: the MLflow store behind http://127.0.0.1:9/ "
                                                                      "is not on this machine")


@pytest.mark.slow
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
