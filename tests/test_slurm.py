"""cluster/slurm.sbatch on a real one-node SLURM (tests/slurm_node.sh: munged, slurmctld and slurmd from
Debian's packages, in namespaces of their own): the job's exit code is the study's; a study cancelled
mid-way (scancel) is finished by the same sbatch with --resume, with no duplicate run and every epoch
logged once."""
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from procs import in_namespaces, keep_or_remove, read
from runner import runs_of

ROOT = Path(__file__).resolve().parents[1]
NEEDS = ("unshare", "munged", "slurmctld", "slurmd", "sbatch", "scancel", "ip")
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
EPOCHS = 10


@pytest.fixture(scope="module")
def slurm_run():
    missing = [t for t in NEEDS if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing more'} (.ci/run installs slurm-wlm, munge)")
    work = Path(tempfile.mkdtemp(prefix="slurm", dir="/var/tmp"))   # not /tmp's pytest folder: the job reads it
    study = work / "study.yaml"
    # NECST on digits, confirmed on three seeds (nothing to search; one trial, the seeds stacked): batches
    # of 10, so that it trains for seconds and the scancel lands mid-training
    study.write_text(yaml.safe_dump({"study": "slurm", "dataset": "digits", "seeds": [0, 1, 2],
                                     "fixed": {"epochs": EPOCHS, "K": 2, "method": "necst", "batch_size": 10},
                                     "resources": {"cpu": 1}}))
    run = in_namespaces(ROOT / "tests" / "slurm_node.sh", work, Path(sys.executable).parent.parent, ROOT, study,
                        timeout=1200)
    yield work, run
    keep_or_remove(work, "IABF_KEEP_SLURM")


def test_the_jobs_exit_code_is_the_studys(slurm_run):
    work, run = slurm_run
    assert read(work, "setup.rc").strip() == "0", read(work, "slurmctld.log")[-2000:] + run.stderr[-2000:]
    out = read(work, "bad.out")
    assert read(work, "bad.rc").strip() == "2", out[-3000:]
    assert re.search(r"^error: .*no-such-study\.yaml", out, re.M), out[-3000:]
    assert "the study exited 2" in out and "Ray head" not in out   # refused before MLflow and Ray start


def test_a_cancelled_study_is_finished_by_the_same_sbatch_with_resume(slurm_run):
    work, _ = slurm_run
    run, resumed = read(work, "run.out"), read(work, "resume.out")
    assert 3 <= int(read(work, "before_cancel.txt")) < EPOCHS, run[-3000:]   # cancelled mid-training
    assert "JobState=CANCELLED" in read(work, "cancelled.txt"), read(work, "cancelled.txt")
    assert re.search(r"interrupted by SIGTERM: 0 of the study's 3 runs \(a trial per seed\) ended, 3 unfinished", run), run[-3000:]
    assert read(work, "resume.rc").strip() == "0", resumed[-5000:]
    assert re.search(r"joined the Ray cluster at 10\.77\.0\.2:\d+: 1 node\(s\), 2 CPUs", resumed), resumed[-3000:]
    assert "the study exited 0" in resumed and list((work / "studies" / "results").glob("slurm-*/report/*.md"))
    print(f"\nSLURM jobs: the bad study {read(work, 'bad.s').strip()} s; the study until scancel'd "
          f"{read(work, 'run.s').strip()} s; the resume {read(work, 'resume.s').strip()} s")
    # the job's store: one run per seed, none left RUNNING, every epoch logged once
    client = MlflowClient(f"sqlite:///{work / 'studies' / 'mlflow' / 'mlflow.db'}")
    parents, children = runs_of(client, "slurm")
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.tags["stop_reason"] for r in children) == ["completed"] * 3
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/distortion")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps
    assert not [p for p in parents if p.info.status == "RUNNING"]
    # the token of each job is gone with it, and nothing is left running
    assert not list((work / "studies").glob(".ray-token-*"))
    left = [line for line in read(work, "left.txt").splitlines()
            if not re.search(r"slurm_node\.sh|ps -eo|munged|slurmctld|slurmd|slurmscriptd", line)]
    assert not left, left
