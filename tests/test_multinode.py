"""A real Ray cluster of two nodes on this machine: a head and a worker, each started with
`ray start` on its own ports and temp dir, with different custom resources, token authentication
on, and ended by process id. Studies run across both nodes and survive losing one; nodes and
drivers without the token are refused, and say why."""
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from procs import alive_nodes, free_port, kill_tree, s3  # noqa: F401  (s3: a fixture)
from runner import store
import yaml
from mlflow.tracking import MlflowClient

from iabf import metrics as M
from iabf.storage import MARK

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = [pytest.mark.slow, pytest.mark.multinode]


class Cluster:
    """Two Ray nodes on loopback sharing one token; the test's own token file, not ~/.ray."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))   # short: socket paths must fit in 107 bytes
        self.token = self.tmp / "token"
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token),
                    # a lost node is noticed in seconds, not half a minute
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs = {}

    def start(self, name: str, *args, env=None, own_disk: Path | None = None) -> subprocess.Popen:
        """own_disk: a folder this node does not share with the others (a mount namespace of its own, an
        empty tmpfs over it), as a worker whose disk is its own does not have the head's files."""
        hide = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                f'mount -t tmpfs iabf-own-disk "{own_disk}" && exec "$@"', "sh"] if own_disk else []
        proc = subprocess.Popen([*hide, RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                 "--disable-usage-stats", *args],
                                env={**(env or self.env), "RAY_TMPDIR": str(self.tmp / name)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_head(self, *args) -> None:
        """The head node, answering on its port."""
        self.start("head", "--head", "--port", str(self.port), "--include-dashboard=false", *args)
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.5)

    def nodes(self) -> list[dict]:
        """The live nodes, from a driver that joins with the token."""
        return alive_nodes(self.env, self.address)

    def wait_for_nodes(self, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            nodes = self.nodes()
            if len(nodes) == n:
                return nodes
            time.sleep(1)
        pytest.fail(f"the cluster did not reach {n} nodes")

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_tree(proc.pid)
        shutil.rmtree(self.tmp, ignore_errors=True)


def two_nodes(env: dict | None = None, own_disk: Path | None = None) -> Cluster:
    c = Cluster()
    c.env.update(env or {})
    c.start_head("--resources", '{"head_node": 1}')
    c.start("worker", "--address", c.address, "--resources", '{"worker_node": 1}', own_disk=own_disk)
    c.ids = {("worker" if "worker_node" in n["Resources"] else "head"): n["NodeID"] for n in c.wait_for_nodes(2)}
    return c


@pytest.fixture
def cluster():
    c = two_nodes()
    yield c
    c.stop()


def study(tmp_path, cluster, *args, env=None, wait=True):
    cmd = [sys.executable, str(ROOT / "studies" / "ablation.py"), "--storage", str(tmp_path / "results"),
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--chain-steps", "5", "--address", cluster.address,
           *args]
    # the driver finds the token by Ray's documented means (RAY_AUTH_TOKEN_PATH here); RAY_AUTH_MODE
    # is left for it to set, as a user's shell would leave it
    env = env or {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_study_runs_on_both_nodes_and_a_trial_moves_when_its_node_is_lost(cluster, tmp_path, data_dir):
    """Two trials, one per node (one CPU each). SIGKILL the worker node's processes while its trial
    trains: Ray retries the trial on the head, which goes on from the state the trial last wrote to
    the study's storage. Every epoch is logged once, no run is duplicated, and each run's tags say
    which nodes trained it; the lost node does not count against the trial's allowed failures."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "study": "twonodes", "dataset": "mnist", "confirm": False, "seeds": [0],
        "fixed": {"epochs": 8, "K": 2, "method": "necst", "max_train_examples": 3000},
        "search": {"lr": {"grid": [0.001, 0.002]}}, "resources": {"cpu": 1}}))
    client = MlflowClient(store(tmp_path))   # polled while the driver starts: a store with its schema made
    proc = study(tmp_path, cluster, "--space", str(space), "--data-dir", str(data_dir), wait=False)
    worker_node, killed, deadline = cluster.ids["worker"], False, time.time() + 300
    while not killed and time.time() < deadline:   # the worker's trial has logged 2 epochs: lose the node
        time.sleep(0.3)
        with contextlib.suppress(Exception):
            exp = client.get_experiment_by_name("twonodes")
            runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
            on_worker = [r for r in runs if r.data.tags.get("node_id") == worker_node]
            if on_worker and len(client.get_metric_history(on_worker[0].info.run_id, M.EPOCH)) >= 2:
                kill_tree(cluster.procs["worker"].pid)
                killed = True
    out, _ = proc.communicate(timeout=600)
    assert killed and proc.returncode == 0, out[-4000:]
    assert re.search(rf"joined the Ray cluster at [\d.]+:{cluster.port}: 2 node\(s\), 2 CPUs", out), out[:2000]
    exp = client.get_experiment_by_name("twonodes")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
    assert len(runs) == 2 and len({r.data.tags["uid"] for r in runs}) == 2            # no duplicate run
    moved = [r for r in runs if len(r.data.tags["node_ids"].split(",")) == 2]
    assert len(moved) == 1 and moved[0].data.tags["node_ids"].split(",")[0] == worker_node
    assert len({n for r in runs for n in r.data.tags["node_ids"].split(",")}) == 2    # both nodes trained
    for r in runs:
        assert r.data.tags["stop_reason"] == "completed" and r.data.tags["hostname"] == socket.gethostname()
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == list(range(1, 9))
    assert {n for r in runs for n in r.data.tags["node_ids"].split(",")} == set(cluster.ids.values())
    # the moved trial went on from its state: the restarted process trained only the epochs after it
    trial_dir = next(d for d in (tmp_path / "results").glob("twonodes-*/trainable_*") if (d / "error.txt").exists())
    fresh = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    fresh = [r for r in fresh if not r.get("replayed")]
    restarted = [r[M.EPOCH] for r in fresh if r["node_id"] != worker_node]
    assert restarted and restarted[0] > 2 and restarted == list(range(restarted[0], 9))
    # the lost node is not a failure of the trial (studies/protocol.NodeLoss): a spot instance reclaimed three
    # times must not fail a trial that Tune allows two failures
    from studies.protocol import NodeLoss
    assert NodeLoss.LOST.search((trial_dir / "error.txt").read_text())   # what Ray said of the trial's lost node
    (state,) = sorted((tmp_path / "results").glob("twonodes-*/experiment_state-*.json"))[-1:]
    failures = [json.loads(meta)["num_failures"] for _, meta in json.loads(state.read_text())["trial_data"]]
    assert failures == [0, 0], (failures, (trial_dir / "error.txt").read_text()[-1500:])


def test_nodes_and_drivers_without_the_token_are_refused_and_told_why(cluster, tmp_path):
    # a node with a wrong token, and one with none at all (token mode off, no token file at home)
    wrong = cluster.start("wrong", "--address", cluster.address, "--resources", '{"rogue": 1}',
                          env={**cluster.env, "RAY_AUTH_TOKEN": "0" * 64})
    bare = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    none = cluster.start("none", "--address", cluster.address, "--resources", '{"rogue": 1}',
                         env={**bare, "HOME": str(tmp_path)})
    for proc in (wrong, none):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0 and "Authentication token is missing or incorrect" in out, out[-2000:]
    nodes = cluster.wait_for_nodes(2)
    assert not any("rogue" in n for n in nodes)

    # a driver with the wrong token: one line that says it is the token, and how to fix it; nothing written
    out = study(tmp_path, cluster, "--smoke", env={**bare, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "0" * 64})
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot join the Ray cluster at '{cluster.address}': the cluster uses token "
                           "authentication"), out.stderr[-2000:]
    assert "~/.ray/auth_token" in last and "RAY_AUTH_TOKEN" in last
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (a mount namespace)")
def test_a_storage_the_worker_does_not_see_is_refused_before_any_trial_and_s3_runs_on_both(tmp_path, data_dir, s3):  # noqa: F811
    """The worker's disk is its own: the test's folder (the head's storage, store and data) is an empty
    tmpfs there. The default storage, a folder on the head, is refused in seconds, naming the worker,
    with nothing left of the study; on S3 the study runs on both nodes, and the worker, which joined before
    the study's data folder was filled, fetches the dataset from the copy the study put on S3."""
    cluster = two_nodes(env=s3.env, own_disk=tmp_path)
    try:
        space = tmp_path / "space.yaml"
        space.write_text(yaml.safe_dump({
            "study": "owndisk", "dataset": "mnist", "confirm": False, "seeds": [0],
            "fixed": {"epochs": 2, "K": 2, "method": "necst", "max_train_examples": 1000},
            "search": {"lr": {"grid": [0.001, 0.002]}}, "resources": {"cpu": 1}}))
        (tmp_path / "data").mkdir()   # prepared after the worker joined, on the head only
        shutil.copy(data_dir / "mnist.npz", tmp_path / "data")
        env = {**{k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}, **s3.env}
        t0 = time.time()
        out = study(tmp_path, cluster, "--space", str(space), "--data-dir", str(tmp_path / "data"), env=env)
        took = time.time() - t0
        assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --storage: 1 of the cluster's 2 nodes do not see the study's folder (node "), last
        assert f"{tmp_path / 'results'}/owndisk-" in last and "is not on this node" in last
        assert "s3://BUCKET/PREFIX" in last
        assert not list((tmp_path / "results").glob("owndisk-*")) and "trial" not in out.stdout.lower()
        assert not [e for e in MlflowClient(store(tmp_path)).search_experiments() if e.name == "owndisk"]
        print(f"refused in {took:.0f} s")

        out = study(tmp_path, cluster, "--space", str(space), "--data-dir", str(tmp_path / "data"), "--storage",
                    f"s3://{s3.bucket}/iabf", env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        client = MlflowClient(store(tmp_path))
        exp = client.get_experiment_by_name("owndisk")
        runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
        assert len(runs) == 2 and all(r.data.tags["stop_reason"] == "completed" for r in runs)
        assert {r.data.tags["node_id"] for r in runs} == set(cluster.ids.values())      # a trial on each node
        assert [k for k in s3.keys("iabf/datasets/") if k.endswith("/mnist.npz")]
    finally:
        cluster.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (a mount namespace)")
def test_a_node_that_joins_later_without_the_storage_stops_the_study_before_its_trial_trains(tmp_path, data_dir):
    """A head with no CPUs for trials (an autoscaler's cluster), and a worker, whose disk is its own, that joins
    after the study's check: its first trial finds no study folder and stops the study in one line, with the
    fix and the --resume command, before training."""
    c = Cluster()
    try:
        c.start_head("--num-cpus", "0")
        c.wait_for_nodes(1)
        proc = study(tmp_path, c, "--smoke", "--data-dir", str(data_dir), wait=False)
        deadline = time.time() + 120
        while not list((tmp_path / "results").glob(f"quick-smoke-*/{MARK}")) and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        c.start("worker", "--address", c.address, own_disk=tmp_path)    # joins after the check
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 1, out[-4000:]
        last = [line for line in out.splitlines() if line.startswith("error: ")][-1]
        assert re.match(r"error: trial \w+ on node \S+: the study's folder \S+/quick-smoke-[\d-]+ is not on this node "
                        r"\(its disk is not the driver.s\); the study stopped: .*; give every node the study's storage",
                        last), out[-3000:]
        assert "--resume" in out.splitlines()[-1]
        exp = MlflowClient(store(tmp_path)).get_experiment_by_name("quick-smoke")
        runs = [r for r in MlflowClient(store(tmp_path)).search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
        assert runs and not [r for r in runs if r.data.metrics.get(M.EPOCH)]   # no trial trained an epoch
    finally:
        c.stop()
