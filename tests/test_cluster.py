"""cluster.yaml against the schema Ray ships, its security rules, fractional GPUs in Ray, and the
study driver's choice of Ray cluster (a real `ray start --head`)."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest
import requests
from procs import SERVER_ENV, free_port, kill_tree
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_launcher_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)
    assert CLUSTER["provider"]["type"] == "aws"
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    gpu = CLUSTER["available_node_types"]["gpu"]
    assert head["resources"] == {"CPU": 0} and gpu["min_workers"] == 0
    assert "~/iabf" in CLUSTER["file_mounts"]
    assert any("pip install" in c and "~/iabf" in c for c in CLUSTER["setup_commands"])


def test_no_port_but_ssh_is_open_to_the_internet_and_ray_alone_opens_it():
    """Ray's launcher always adds its own SSH rule (0.0.0.0/0, port 22) and the nodes' rules to each
    other, then appends the file's IpPermissions: a second SSH rule would be a duplicate AWS refuses."""
    group = CLUSTER["provider"]["security_group"]
    assert group == {"GroupName": "ray-iabf"}


def test_what_only_aws_can_check_is_as_the_issue_found_it_fixed():
    """The lines of cluster.yaml that tests/test_ray_up.py replaces (provider, node types, image):
    a current image (not Ray's `latest_dlami`, Ubuntu 18.04 with Python 3.6), workers that may write the
    study's S3 storage (Ray gives its IAM profile to the head only)."""
    for name, node in CLUSTER["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/") and "ubuntu-24.04" in image, name
    assert CLUSTER["available_node_types"]["gpu"]["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}
    setup = " ".join(CLUSTER["setup_commands"])
    assert "uv venv --seed --python 3.11" in setup and "-c ~/iabf/constraints.txt" in setup and "[cluster]" in setup
    assert "~/data" in CLUSTER["cluster_synced_files"]     # datasets reach every node that runs trials


def test_every_node_starts_with_token_authentication_and_the_heads_token_reaches_every_worker():
    starts = CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert sum("ray start" in c for c in starts) == 2
    assert CLUSTER["cluster_synced_files"][0] == "~/.ray/auth_token"


def test_the_heads_token_command_makes_one_secret_file_and_never_prints_it(tmp_path):
    """The head's setup command, run for real (with this Python for the head's venv): a 64-hex-digit
    token in ~/.ray/auth_token, readable by its owner only, nothing printed, kept on a second run."""
    (command,) = [c for c in CLUSTER["head_setup_commands"] if "auth_token" in c]
    command = command.replace("~/venv/bin/python", sys.executable)
    run = lambda: subprocess.run(["bash", "-c", command], env={**os.environ, "HOME": str(tmp_path)},   # noqa: E731
                                 capture_output=True, text=True, timeout=30)
    out = run()
    token = tmp_path / ".ray" / "auth_token"
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text()) and (token.stat().st_mode & 0o777) == 0o600
    first = token.read_text()
    assert run().returncode == 0 and token.read_text() == first


def test_no_token_is_in_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for name in files:
        path = ROOT / name
        if path.is_file() and path.suffix not in (".png", ".pdf", ".npz"):
            assert not re.search(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", path.read_text(errors="ignore")), name
    assert ".ray/" not in " ".join(files)


def test_uis_listen_on_private_addresses_only():
    head = " ".join(CLUSTER["head_setup_commands"] + CLUSTER["head_start_ray_commands"])
    server = (ROOT / "cluster" / "mlflow_server.sh").read_text()
    assert "bash ~/iabf/cluster/mlflow_server.sh start" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head and "0.0.0.0" not in server.replace("never 0.0.0.0", "")
    assert "--app-name basic-auth" in server and "--serve-artifacts" in server and "sqlite:///" in server
    assert "hostname -I" in server                         # the node's private address


@pytest.fixture
def ray_with_a_gpu():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # a declared GPU: the scheduler's view
    yield
    ray.shutdown()


def test_fractional_gpu_trials_share_one_declared_gpu(ray_with_a_gpu, tmp_path):
    from ray import tune

    from iabf.config import Config
    from iabf.tune import GPUUnusable, trial_device

    def probe(config):
        import time
        start = time.time()
        time.sleep(8)  # long enough that two trials overlap if the scheduler packs them, even if one starts late
        try:
            auto = trial_device(Config(device="auto"))
        except GPUUnusable as e:
            auto = str(e)
        tune.report({"gpus": len(ray.get_gpu_ids()), "device": trial_device(Config(device="cpu")), "auto": auto,
                     "start": start, "end": time.time()})

    grid = tune.Tuner(tune.with_resources(probe, {"cpu": 1, "gpu": 0.5}),
                      param_space={"i": tune.grid_search([0, 1])},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    results = [r.metrics for r in grid]
    assert not grid.errors and len(results) == 2
    assert all(m["gpus"] == 1 for m in results)                  # each trial was given the GPU
    assert all(m["device"] == "cpu" for m in results)            # a study that asks for the CPU gets it
    # ... and one that leaves the device to Ray is stopped with the node, driver and CUDA build named: no CUDA
    # here, and a GPU trial on the CPU would be a silent 50x slowdown
    assert all(re.fullmatch(r"node \S+ gave this trial GPU \[\S+\] but torch cannot use it \(NVIDIA driver .+; "
                            r"torch \S+ built for CUDA .+\); install a driver for that CUDA, or set device: cpu .+",
                            m["auto"]) for m in results), results[0]["auto"]
    a, b = sorted(results, key=lambda m: m["start"])
    assert b["start"] < a["end"]                                 # 0.5 + 0.5: both ran at once


# --- the study's default address: join the cluster this machine belongs to, else a local Ray ---

@pytest.fixture
def ray_head():
    """A real `ray start --head` (what `ray up` leaves on a head node) on its own port and in its own
    temp dir (RAY_TMPDIR, short: Ray's socket paths must fit in 107 bytes); ended by process id."""
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address_file = Path(tmp) / "ray" / "ray_current_cluster"
    deadline = time.time() + 60
    while not (address_file.exists() and address_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.5)
    assert address_file.exists(), "ray start --head did not come up"
    yield {"env": env, "port": port, "pid": head.pid, "tmp": Path(tmp)}
    kill_tree(head.pid)
    shutil.rmtree(tmp, ignore_errors=True)


def study(env, tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "studies" / "ablation.py"), "--smoke", "--chain-steps", "5",
                           "--storage", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def sessions(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "ray").glob("session_2*"))


@pytest.mark.slow
def test_without_address_a_study_joins_this_machines_cluster_and_survives_a_dead_one(ray_head, tmp_path):
    """`ray up` then `python studies/ablation.py` on the head: the study joins the running cluster
    (no second Ray is started). Once that cluster has died, its address is stale: a warning, and
    the study runs on a local Ray."""
    env, port, tmp = ray_head["env"], ray_head["port"], ray_head["tmp"]
    out = study(env, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Ray names the head by this machine's address, which may not be loopback
    assert re.fullmatch(rf"joined the Ray cluster at [\d.]+:{port}: 1 node\(s\), 2 CPUs, 0 GPUs", out.stdout.splitlines()[0])
    assert "3 completed" in out.stdout
    assert len(sessions(tmp)) == 1                      # the head's own session: no local Ray was started

    kill_tree(ray_head["pid"])                           # the cluster dies; its address file stays behind
    out = study(env, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.splitlines()[0] == "started a local Ray with 2 CPUs"
    assert re.search(rf"warning: the Ray cluster last started on this machine \(at [\d.]+:{port}\) is gone", out.stderr)
    assert len(sessions(tmp)) == 2


def test_ray_address_comes_before_this_machines_cluster(ray_head, monkeypatch):
    """RAY_ADDRESS names the cluster to join, as for ray.init(); with neither it and nor a cluster
    on this machine, a local Ray starts."""
    from studies import cluster

    empty = tempfile.mkdtemp(prefix="re", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", empty)             # this machine's own address file: none
    monkeypatch.setenv("RAY_ADDRESS", (ray_head["tmp"] / "ray" / "ray_current_cluster").read_text().strip())
    try:
        line = cluster.connect(None, include_dashboard=False, log_to_driver=False)
        assert re.match(rf"joined the Ray cluster at [\d.]+:{ray_head['port']}: 1 node", line), line
    finally:
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS")
    try:
        assert cluster.connect(None, include_dashboard=False, log_to_driver=False).startswith("started a local Ray")
    finally:
        ray.shutdown()
        shutil.rmtree(empty, ignore_errors=True)


# --- the tracking server asks for credentials (cluster/mlflow_server.sh: MLflow's basic-auth app) ---

def refused(out) -> str:
    """The one line a refused client gets: exit 2, nothing but it on stderr, no Ray started."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "started a local Ray" not in out.stdout, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    return line


@pytest.mark.slow
def test_a_tracking_server_that_refuses_the_client_is_one_line_before_ray_starts(tmp_path):
    port, head = free_port(), tmp_path / "head"
    head.mkdir()
    venv = str(Path(sys.executable).parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "RAY_ADDRESS"))}
    server = lambda cmd: subprocess.run(["bash", str(ROOT / "cluster" / "mlflow_server.sh"), *cmd],   # noqa: E731
                                        env={**env, "HOME": str(head), "IABF_VENV": venv, "MLFLOW_START_TIMEOUT": "600"},
                                        capture_output=True, text=True, timeout=200)
    # MLflow 3's host check answers 403 "Invalid Host header" to a Host it does not allow: a second server,
    # started now so that its start overlaps the first's
    guarded_port = next(p for p in iter(free_port, None) if p != port)   # neither server bound yet: ports apart
    guarded = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                str(guarded_port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'g.db'}",
                                "--allowed-hosts", "example.org"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=SERVER_ENV)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(kill_tree, guarded.pid)   # whatever fails first
        # another Ray's GCS on this machine (a process named gcs_server): a server started without
        # MLFLOW_FOLLOW_RAY=1 must not follow it, or that Ray's end would take the server down mid-test
        shutil.copy("/bin/sleep", tmp_path / "gcs_server")
        other_ray = subprocess.Popen([str(tmp_path / "gcs_server"), "600"])
        cleanup.callback(other_ray.kill)
        started = server(["start", "127.0.0.1", str(port)])
        assert started.returncode == 0, started.stdout + started.stderr
        assert len((head / "mlflow" / "server.pid").read_text().split()) == 1   # the server's pid, no watcher
        uri = f"http://127.0.0.1:{port}"
        run = lambda *args, **extra: subprocess.run([sys.executable, *args], cwd=tmp_path,   # noqa: E731
                                                    env={**env, "HOME": str(tmp_path), **extra},
                                                    capture_output=True, text=True, timeout=120)
        smoke = (str(ROOT / "studies" / "ablation.py"), "--smoke", "--storage", str(tmp_path / "r"), "--tracking-uri", uri)
        try:
            line = refused(run(*smoke))
            assert line == (f"error: MLflow tracking server {uri} asks for credentials and none were given (401); set "
                            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or put them in ~/.mlflow/credentials "
                            f"(on a cluster made by cluster.yaml or cluster/slurm.sbatch the head's ~/.mlflow/credentials has them)")
            wrong = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
            assert refused(run(*smoke, **wrong)).startswith(
                f"error: MLflow tracking server {uri} refused the credentials of user 'admin' (401); set MLFLOW_TRACKING_USERNAME")
            report = ("-m", "analysis.report", "--tracking-uri", uri, "--study", "nothing-here", "--out", str(tmp_path / "rep"))
            assert refused(run(*report, **wrong)).startswith(f"error: MLflow tracking server {uri} refused the credentials")
            # with the head's ~/.mlflow/credentials (what MLflow's client reads by itself) the server answers:
            # the report gets as far as the study it cannot find
            found = run(*report, HOME=str(head))
            assert found.returncode == 2 and "nothing-here" in found.stderr and "401" not in found.stderr, found.stderr
            assert not (tmp_path / "r").exists() and not (tmp_path / "rep").exists()   # nothing half-written
        finally:
            assert server(["stop"]).returncode == 0
        port = guarded_port
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:   # up: it answers anything
            with contextlib.suppress(requests.RequestException):
                requests.get(uri + "/health", timeout=2)
                break
            time.sleep(0.5)
        out = run(*smoke[:-1], uri)
        assert refused(out).startswith(f"error: MLflow tracking server {uri} refused this client (403: "), out.stderr
        assert refused(out).endswith(f"its host check does not allow '127.0.0.1:{port}': start it with "
                                     f"--allowed-hosts 127.0.0.1:{port}")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="needs root, unshare and ip (a network namespace)")
def test_the_tracking_server_answers_on_a_node_whose_address_is_public(tmp_path):
    """A node whose only address is not private (203.0.113.7, a documentation range, in a network namespace
    of its own): the start script's server answers on the node's own address and through a tunnel, with its credentials,
    within seconds (MLflow's default host check answered 403 to everything but /health, and the script waited
    its 300 s); the store file it serves is recorded for the study's copy (server.json)."""
    venv = str(Path(sys.executable).parent.parent)
    inside = f'''
set -e; ip link set lo up; ip link add n0 type veth peer name n1; ip addr add 203.0.113.7/24 dev n0
ip link set n1 up; ip link set n0 up; set +e   # the node's one address (a veth pair, as tests/ray_up_node.sh)
export HOME={tmp_path} IABF_VENV={venv} MLFLOW_START_TIMEOUT=120
t0=$SECONDS; bash {ROOT}/cluster/mlflow_server.sh start || exit 3
echo "started in $((SECONDS - t0)) s"
{sys.executable} -c "from iabf.record import server_refusal; print('refusal:', server_refusal('http://203.0.113.7:5000'))"
# what an SSH tunnel delivers (ssh -L 5000:203.0.113.7:5000): the Host header the user's browser sends
{sys.executable} -c "import requests; from mlflow.utils.credentials import read_mlflow_creds; c = read_mlflow_creds(); \
print('tunnel:', requests.get('http://203.0.113.7:5000/api/2.0/mlflow/experiments/search?max_results=1', \
headers={{'Host': 'localhost:5000'}}, auth=(c.username, c.password), timeout=10).status_code)"
cat {tmp_path}/mlflow/server.json
bash {ROOT}/cluster/mlflow_server.sh stop
'''
    out = subprocess.run(["unshare", "--net", "--", "bash", "-c", inside], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "MLflow tracking server: http://203.0.113.7:5000" in out.stdout
    assert "refusal: None" in out.stdout and "tunnel: 200" in out.stdout, out.stdout + out.stderr[-2000:]
    assert json.loads(out.stdout.split("\n{", 1)[1].split("}", 1)[0].join("{}")) == {
        "url": "http://203.0.113.7:5000", "store": f"{tmp_path}/mlflow/mlflow.db"}
    assert not (tmp_path / "mlflow" / "server.json").exists()   # gone with the server
    seconds = int(re.search(r"started in (\d+) s", out.stdout).group(1))
    assert seconds < 120
    print(f"started in {seconds} s")
