"""Autoscaling from zero with GPU-typed workers, for real: Ray's fake multi-node provider
(RAY_FAKE_CLUSTER=1: the autoscaler on the head launches each "node" as a raylet on this machine) with
cluster.yaml's shape: a head that offers no CPU, a `gpu` worker type {CPU: 2, GPU: 1} from 0 to 2 nodes.
A study whose trials ask for half a GPU makes the autoscaler launch gpu nodes; the trials run there (their
MLflow node tags say so); a gpu node lost mid-trial has its trial finish on another node from its state;
idle nodes are removed. The GPUs are declared, not real: the trials train with device: cpu."""
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from procs import alive_nodes, free_port, kill_tree
from runner import store

from iabf import metrics as M

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SHIPPED = yaml.safe_load((ROOT / "cluster.yaml").read_text())
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
EPOCHS = 30


def fake_cluster_config(port: int, provider: str = "spot_provider.SpotFakeProvider") -> dict:
    gpu = SHIPPED["available_node_types"]["gpu"]
    return {
        "cluster_name": "iabf-fake",
        "max_workers": 2,
        "upscaling_speed": SHIPPED["upscaling_speed"],
        "idle_timeout_minutes": 0.2,            # cluster.yaml's 10 minutes, shortened to 12 s for a test
        # Ray's fake multi-node provider, whose nodes can be lost like spot instances (tests/spot_provider.py)
        "provider": {"type": "external", "module": provider, "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": SHIPPED["available_node_types"]["head"]["resources"], "node_config": {},
                                 "max_workers": 0},
            "gpu": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": gpu["min_workers"],
                    "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        # what `ray up` would fill in (Ray's defaults for the fake provider live in an example.yaml the wheel lacks);
        # the fake provider starts its nodes itself: no file is synced and no command run on them
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def raylet_of(node_id: str, tmp: Path) -> psutil.Process | None:
    """The fake node's raylet: the process this cluster's autoscaler started with that node id."""
    for p in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            env = p.environ()
            if p.info["name"] == "raylet" and env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id and \
                    env.get("RAY_TMPDIR") == str(tmp):
                return p
    return None


def fake_head(provider: str = "spot_provider.SpotFakeProvider"):
    tmp = Path(tempfile.mkdtemp(prefix="as", dir="/tmp"))   # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    (tmp / "autoscaler.yaml").write_text(yaml.safe_dump(fake_cluster_config(port, provider)))
    token = tmp / "token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update({"RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_TMPDIR": str(tmp), "PYTHONPATH": str(ROOT / "tests"),   # the head's autoscaler imports spot_provider
                # a lost node is noticed in seconds, not half a minute
                "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"})
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "0", "--include-dashboard=false", "--disable-usage-stats",
                             "--autoscaling-config", str(tmp / "autoscaler.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp / "ray" / "ray_current_cluster").exists():
        time.sleep(0.5)
    yield {"env": env, "address": address, "tmp": tmp}
    for p in psutil.process_iter(["name"]):   # the fake nodes' raylets, started by the head's autoscaler
        with contextlib.suppress(psutil.Error):
            if p.environ().get("RAY_TMPDIR") == str(tmp) and p.pid != head.pid:
                kill_tree(p.pid)
    kill_tree(head.pid)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def fake_cluster():
    yield from fake_head()


def test_gpu_nodes_are_launched_for_the_trials_replaced_when_lost_and_removed_when_idle(fake_cluster, tmp_path):
    env, address = fake_cluster["env"], fake_cluster["address"]
    assert [n["Resources"].get("CPU", 0) for n in alive_nodes(env, address)] == [0]   # the head alone, no CPU
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "study": "autoscale", "dataset": "digits", "seeds": [0, 1, 2, 3],
        "fixed": {"epochs": EPOCHS, "K": 2, "method": "necst", "batch_size": 10, "device": "cpu"},
        "resources": {"cpu": 1, "gpu": 0.5}}))
    t0 = time.time()
    driver_env = {k: v for k, v in env.items() if k not in ("RAY_FAKE_CLUSTER", "RAY_AUTH_MODE")}
    uri = store(tmp_path)   # polled while the driver starts: a store with its schema made
    proc = subprocess.Popen([sys.executable, str(ROOT / "studies" / "ablation.py"), "--space", str(space),
                             "--address", address, "--storage", str(tmp_path / "results"), "--chain-steps", "5",
                             "--tracking-uri", uri],
                            cwd=tmp_path, env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(uri)
    launched, lost, deadline = {}, None, time.time() + 400
    while lost is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):
            exp = client.get_experiment_by_name("autoscale")
            runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
            for r in runs:   # when each node first trained
                if r.data.tags.get("node_id"):
                    launched.setdefault(r.data.tags["node_id"], time.time() - t0)
            training = [r for r in runs if r.data.tags.get("node_id") and r.info.status == "RUNNING"
                        and len(client.get_metric_history(r.info.run_id, M.EPOCH)) >= 3]
            if training and (raylet := raylet_of(training[0].data.tags["node_id"], fake_cluster["tmp"])) is not None:
                lost, lost_at = training[0].data.tags["node_id"], time.time() - t0
                kill_tree(raylet.pid)                     # the node is reclaimed, with its trials' processes
    out, _ = proc.communicate(timeout=600)
    done = time.time() - t0
    assert lost and proc.returncode == 0, out[-5000:]
    assert re.search(rf"joined the Ray cluster at [\d.]+:{address.split(':')[1]}: 1 node\(s\), 0 CPUs, 0 GPUs", out)
    assert "warning: no node of the cluster has 1 CPUs and 0.5 GPUs per trial now" in out
    exp = client.get_experiment_by_name("autoscale")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
    assert len(runs) == 4 and len({(r.data.tags["uid"], r.data.params["seed"]) for r in runs}) == 4   # no duplicate
    nodes = {n for r in runs for n in r.data.tags["node_ids"].split(",")}
    head = [n["NodeID"] for n in alive_nodes(env, address) if n["Resources"].get("CPU", 0) == 0]
    assert head and not nodes & set(head)                    # every trial trained on a launched gpu node
    moved = [r for r in runs if len(r.data.tags["node_ids"].split(",")) == 2]
    assert moved and all(r.data.tags["node_ids"].split(",")[0] == lost for r in moved)
    assert len(nodes) >= 2                                   # a node was launched after the lost one
    for r in runs:                                           # from its state: every epoch logged once
        assert r.data.tags["stop_reason"] == "completed"
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, M.EPOCH)) == list(range(1, EPOCHS + 1))
    # idle gpu nodes are removed
    deadline = time.time() + 180
    while time.time() < deadline and len(alive_nodes(env, address)) > 1:
        time.sleep(2)
    removed = time.time() - t0
    assert len(alive_nodes(env, address)) == 1
    print(f"\nautoscaling: first training on a launched node at {min(launched.values()):.0f} s; node {lost[-5:]} lost "
          f"at {lost_at:.0f} s; nodes that trained: {sorted(n[-5:] for n in nodes)}; study done at {done:.0f} s; "
          f"idle nodes removed by {removed:.0f} s")


def test_workers_that_fail_to_launch_are_said_within_a_minute(tmp_path):
    """A provider that refuses every launch (as EC2 refuses a role without ssm:GetParameters): the study does
    not wait in silence; within a minute of its start it says which node type could not be launched and why."""
    cluster = fake_head("spot_provider.RefusedProvider")
    c = next(cluster)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"study": "refused", "dataset": "digits", "seeds": [0], "confirm": False,
                                     "fixed": {"epochs": 2, "K": 2, "method": "necst", "device": "cpu"},
                                     "resources": {"cpu": 1, "gpu": 0.5}}))
    driver_env = {k: v for k, v in c["env"].items() if k not in ("RAY_FAKE_CLUSTER", "RAY_AUTH_MODE")}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / "studies" / "ablation.py"), "--space", str(space),
                             "--address", c["address"], "--storage", str(tmp_path / "results"), "--chain-steps", "5",
                             "--tracking-uri", store(tmp_path)],
                            cwd=tmp_path, env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said, lines = None, []
    try:
        for line in proc.stdout:   # the driver's output as it comes
            lines.append(line)
            if line.startswith("warning: the cluster's autoscaler could not launch"):
                said = time.time() - t0
                break
            if time.time() - t0 > 120:
                break
    finally:
        proc.terminate()           # a stop signal: the study stops cleanly
        proc.communicate(timeout=120)
        with contextlib.suppress(StopIteration):
            next(cluster)
    assert said is not None and said < 60, "".join(lines)[-3000:]
    assert ("could not launch a 'gpu' node (UnauthorizedOperation: You are not authorized to perform: "
            "ssm:GetParameters") in lines[-1]
    print(f"the failed launch said {said:.0f} s after the study started")
