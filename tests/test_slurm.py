"""cluster/slurm.sbatch on a real two-node SLURM (tests/slurm_node.sh: munged, slurmctld and a slurmd per
node from Debian's packages, each node in namespaces of its own on a bridge): the job's exit code is the
study's; two jobs of one user at once on one store both finish; a study across both nodes, each offering
Ray its own CPUs, is signalled as proctrack/cgroup signals a job (every process at once, the MLflow server
too), ends within KillWait, and is finished by the same sbatch with --resume, with no duplicate run and
every epoch logged once."""
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
EPOCHS = 6


@pytest.fixture(scope="module")
def slurm_run():
    missing = [t for t in NEEDS if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing more'} (.ci/run installs slurm-wlm, munge)")
    work = Path(tempfile.mkdtemp(prefix="slurm", dir="/var/tmp"))   # not /tmp's pytest folder: the job reads it
    # NECST on digits, three learning rates at once (one trial each, one seed, nothing confirmed): batches of
    # 20, so that it trains for seconds and the signal lands mid-training
    study = work / "study.yaml"
    study.write_text(yaml.safe_dump({"study": "slurm", "dataset": "digits", "seeds": [0], "confirm": False,
                                     "fixed": {"epochs": EPOCHS, "K": 2, "method": "necst", "batch_size": 20},
                                     "search": {"lr": {"grid": [0.001, 0.002, 0.003]}}, "resources": {"cpu": 1}}))
    twins = [work / f"twin{i}.yaml" for i in (1, 2)]
    for i, twin in enumerate(twins, 1):
        twin.write_text(yaml.safe_dump({"study": f"twin{i}", "dataset": "digits", "seeds": [0], "confirm": False,
                                        "fixed": {"epochs": 2, "K": 2, "method": "necst"}, "resources": {"cpu": 1}}))
    run = in_namespaces(ROOT / "tests" / "slurm_node.sh", work, Path(sys.executable).parent.parent, ROOT, study, *twins,
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


def test_two_jobs_of_one_user_at_once_on_one_store_both_finish(slurm_run):
    work, _ = slurm_run
    client = MlflowClient(f"sqlite:///{work / 'studies' / 'mlflow' / 'mlflow.db'}")
    for i in (1, 2):
        out = read(work, f"twin{i}.out")
        assert read(work, f"twin{i}.rc").strip() == "0", out[-4000:]
        _, children = runs_of(client, f"twin{i}")
        assert len(children) == 1 and children[0].data.tags["stop_reason"] == "completed"
        assert children[0].data.tags["hostname"] == f"iabfnode{i}"
        assert sorted(m.step for m in client.get_metric_history(children[0].info.run_id, "epoch")) == [1, 2]
    logs = sorted(p.name for p in (work / "studies" / "mlflow").glob("server-*.log"))
    assert len(logs) >= 2, logs                                     # a server per job, each with its own files
    print(f"\ntwo jobs at once: {read(work, 'twin1.s').strip()} s and {read(work, 'twin2.s').strip()} s")


def test_a_study_on_two_nodes_signalled_as_cgroup_does_is_finished_by_resume(slurm_run):
    work, _ = slurm_run
    run, resumed = read(work, "run.out"), read(work, "resume.out")
    assert 3 <= int(read(work, "before_cancel.txt")) < EPOCHS, run[-3000:]   # signalled mid-training
    assert int(read(work, "after_term.s")) <= 30 + 5, run[-3000:]            # within KillWait of the SIGTERM
    # the second node reached the first's tracking server, with the job's credentials
    assert re.search(r"^from iabfnode2 http://10\.77\.0\.11:\d+ None$", read(work, "reach.out"), re.M), read(work, "reach.out")
    assert read(work, "resume.rc").strip() == "0", resumed[-5000:]
    # each node offered Ray its own CPUs: 2 on the first, 1 on the second
    assert re.search(r"joined the Ray cluster at 10\.77\.0\.11:\d+: 2 node\(s\), 3 CPUs", resumed), resumed[-3000:]
    assert "the study exited 0" in resumed and list((work / "studies" / "results").glob("slurm-*/report/*.md"))
    print(f"\nSLURM jobs: the bad study {read(work, 'bad.s').strip()} s; the study until signalled and gone "
          f"{read(work, 'run.s').strip()} s (gone {read(work, 'after_term.s').strip()} s after SIGTERM); "
          f"the resume {read(work, 'resume.s').strip()} s")
    # the store: one run per trial, none left RUNNING, every epoch logged once, trials on both nodes
    client = MlflowClient(f"sqlite:///{work / 'studies' / 'mlflow' / 'mlflow.db'}")
    parents, children = runs_of(client, "slurm")
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.tags["stop_reason"] for r in children) == ["completed"] * 3
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/distortion")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps
    assert {r.data.tags["hostname"] for r in children} == {"iabfnode1", "iabfnode2"}
    assert not [p for p in parents if p.info.status == "RUNNING"]
    # the token of each job is gone with it (or, SIGKILLed, with the next job), and nothing is left running
    assert not list((work / "studies").glob(".ray-token-*"))
    left = [line for line in read(work, "left.txt").splitlines()
            if not re.search(r"slurm_node\.sh|ps -ww -eo|munged|slurmctld|slurmd|slurmscriptd|unshare|sleep|hostname iabfnode", line)]
    assert not left, left
