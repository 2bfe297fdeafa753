"""`ray up cluster.yaml` for real: the shipped file's own setup, head-setup and start commands, run by
Ray's launcher through its `local` provider over SSH to 127.0.0.1 (tests/ray_up_node.sh: Debian's
openssh-server and rsync, a key made by the test, the whole cluster in namespaces of its own). Only what
cannot run here is replaced: the provider (AWS -> local), auth (the test's key and account), the node
types (one local node: it runs the study's trials itself) and the image (this machine)."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from procs import S3, in_namespaces, keep_or_remove, read

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "cluster.yaml").read_text())
COMMANDS = ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
            "initialization_commands", "cluster_synced_files", "file_mounts_sync_continuously", "rsync_exclude")
NEEDS = ("unshare", "/usr/sbin/sshd", "ssh", "rsync", "ip")
pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def derived(node_home: Path) -> dict:
    """cluster.yaml with the provider, auth, node types and image replaced; every command kept as shipped."""
    config = {k: v for k, v in SHIPPED.items() if k not in ("available_node_types", "head_node_type")}
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {"ssh_user": "iabfnode", "ssh_private_key": str(node_home.parent / "key")}
    config["max_workers"] = 0
    config["file_mounts"] = {"~/iabf": str(ROOT)}   # '.', made absolute: ray up runs from the test's folder
    return config


def test_the_derived_config_runs_the_shipped_commands():
    config = derived(Path("/x/node"))
    for key in COMMANDS:
        assert config.get(key) == SHIPPED.get(key), key
    assert list(SHIPPED["file_mounts"]) == ["~/iabf"] and SHIPPED["file_mounts"]["~/iabf"] == "."


def wheelhouse() -> Path | None:
    """The node's packages (constraints.txt's, for the project and its cluster extras, and uv's seed), downloaded
    once per constraints.txt and pyproject.toml into /var/tmp (about 40 s here), so the node installs from this
    machine's disk and the index is not asked on every run. None (the node then installs through the proxy) when
    they cannot be had."""
    key = hashlib.sha256((ROOT / "constraints.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    where = Path("/var/tmp") / f"iabf-wheelhouse-{key[:12]}"
    if not (where / ".whole").exists():
        part = where.with_name(where.name + f".{os.getpid()}.part")
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                              "-d", str(part), "-c", str(ROOT / "constraints.txt"), f"{ROOT}[cluster]", "pip", "setuptools",
                              "wheel"], capture_output=True, text=True, timeout=1200)
        if got.returncode != 0:
            shutil.rmtree(part, ignore_errors=True)
            print(f"no wheelhouse ({got.stderr.strip().splitlines()[-1:]}); the node installs through the proxy")
            return None
        (part / ".whole").touch()
        shutil.rmtree(where, ignore_errors=True)
        part.rename(where)
    return where


TUNNEL = re.compile(r"^(HEAD_PRIVATE=.*)\n(ssh -N -L .*?)(?:\s+#.*)?$", re.M)   # docs/cluster.md's two tunnel lines


def tunnel_script(work: Path) -> str:
    """docs/cluster.md's tunnel to MLflow, with the test's key and account for AWS's, then a request through it."""
    found = TUNNEL.search((ROOT / "docs" / "cluster.md").read_text())
    assert found, "docs/cluster.md's tunnel lines (HEAD_PRIVATE=..., ssh -N -L ...) are not where the test looks"
    ssh = found.group(2).replace("-i ~/.ssh/ray-autoscaler_*.pem ubuntu@",
                                 f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -i {work / 'key'} iabfnode@")
    assert ssh != found.group(2)
    return f"""set -e
{found.group(1)}
echo "HEAD_PRIVATE=$HEAD_PRIVATE"
{ssh} &
sleep 5
creds=$(ray exec {work / 'cluster.yaml'} 'cat ~/.mlflow/credentials' 2>/dev/null)
{sys.executable} - "$creds" <<'PY'
import re, sys, requests
user, password = (re.search(rf"{{k}} = (\\S+)", sys.argv[1]).group(1) for k in ("mlflow_tracking_username", "mlflow_tracking_password"))
url = "http://localhost:5000/api/2.0/mlflow/experiments/search?max_results=1"
print("through the tunnel:", requests.get(url, auth=(user, password), timeout=10).status_code)
PY
kill %1
"""


@pytest.fixture(scope="module")
def cluster_run():
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")   # the test extra's
    missing = [t for t in NEEDS if not shutil.which(t)] + ([] if uv else ["uv"])
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing more'} (.ci/run installs openssh-server, rsync)")
    work = Path(tempfile.mkdtemp(prefix="rayup", dir="/var/tmp"))   # the node's venv (6 GB): not on a tmpfs /tmp
    (work / "node").mkdir()
    (work / "cluster.yaml").write_text(yaml.safe_dump(derived(work / "node"), sort_keys=False))
    (work / "tunnel.sh").write_text(tunnel_script(work))
    # the image: what the AMI would have (uv; this machine's Python 3.11 and package index)
    (work / "node" / ".local" / "bin").mkdir(parents=True)
    shutil.copy(uv, work / "node" / ".local" / "bin" / "uv")
    wheels = wheelhouse()
    s3 = S3()   # outside the cluster's namespace: it outlives `ray down`, as S3 does
    proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "registry_proxy.py"), "serve", str(work / "proxy.sock")])
    bridge = subprocess.Popen([sys.executable, str(ROOT / "tests" / "registry_proxy.py"), "to", str(work / "s3.sock"),
                               f"127.0.0.1:{s3.port}"])
    try:
        run = in_namespaces(ROOT / "tests" / "ray_up_node.sh", work, Path(sys.executable).parent, *([str(wheels)] * bool(wheels)),
                            timeout=1500)
    finally:
        proxy.kill()
        bridge.kill()
    yield work, run, s3, wheels
    s3.stop()
    keep_or_remove(work, "IABF_KEEP_RAY_UP")


def rc(work: Path, step: str) -> int | None:
    text = read(work, f"{step}.rc").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def test_ray_up_sets_up_the_head_with_the_shipped_commands(cluster_run):
    work, run, _, wheels = cluster_run
    up = read(work, "up.log")
    assert rc(work, "up") == 0, up[-5000:] + run.stderr[-2000:]
    print(f"ray up: {read(work, 'up.s').strip()} s")
    venv = work / "node" / "venv"
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "(3, 11)"                                      # uv's Python 3.11, not the image's default
    if wheels:   # installed from this machine's wheels alone: the index was not asked
        assert "PIP_NO_INDEX=1" in (work / "node" / ".profile").read_text()
    # the project installed at the pinned versions, with the cluster extras
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    have = dict(line.split("==") for line in freeze.splitlines() if "==" in line)
    for name in ("ray", "mlflow", "boto3", "Flask-WTF", "aiohttp-cors", "optuna"):
        assert have.get(name) == pins[name], (name, have.get(name), pins[name])
    # the token: made once on the head, owner-only, in no log
    token_file = work / "node" / ".ray" / "auth_token"
    token = token_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token) and (token_file.stat().st_mode & 0o777) == 0o600
    logs = [p for p in work.glob("*.log")] + list((work / "tmp" / "ray").rglob("*.log")) + \
        list((work / "tmp" / "ray").rglob("*.out")) + list((work / "tmp" / "ray").rglob("*.err")) + \
        [work / "node" / "mlflow" / "server.log"]
    assert len(logs) > 10
    assert not [p for p in logs if p.is_file() and token in p.read_text(errors="ignore")]
    # the MLflow password: owner-only, in no log
    creds = work / "node" / ".mlflow" / "credentials"
    password = re.search(r"mlflow_tracking_password = (\S+)", creds.read_text()).group(1)
    assert (creds.stat().st_mode & 0o777) == 0o600
    assert not [p for p in logs if p.is_file() and password in p.read_text(errors="ignore")]


def test_the_tracking_server_answers_on_the_heads_address_to_its_credentials_only(cluster_run):
    work, *_ = cluster_run
    out = read(work, "server.log")
    assert rc(work, "server") == 0, out[-3000:]
    assert re.search(r"^anonymous 401$", out, re.M) and re.search(r"^wrong 401$", out, re.M), out[-3000:]
    assert re.search(r"^credentials 200$", out, re.M), out[-3000:]
    assert "MLflow tracking server: http://10.77.0.1:5000" in read(work, "up.log")


def test_a_study_launched_with_ray_exec_tracks_to_the_heads_server_and_writes_its_report(cluster_run):
    work, *_ = cluster_run
    out = read(work, "study.log")
    assert rc(work, "study") == 0, out[-5000:]
    assert re.search(r"joined the Ray cluster at 10\.77\.0\.1:6379: 1 node\(s\)", out), out[-5000:]
    assert "tracked in http://10.77.0.1:5000" in out and "3 completed" in out, out[-5000:]
    assert ("the study's record outlives the cluster: s3://studies/iabf/mlflow/mlflow.db (a copy of "
            f"{work / 'node' / 'mlflow' / 'mlflow.db'}") in out, out[-3000:]
    reports = list((work / "node" / "iabf" / "results").glob("*/report/*.md"))   # the head's own copy of the report
    assert reports, out[-3000:]


def test_the_record_outlives_ray_down_and_the_report_is_rebuilt_from_it_elsewhere(cluster_run, tmp_path, monkeypatch):
    """After `ray down`, outside the cluster's namespace, as docs/cluster.md's teardown does: the store's copy from
    S3, and from it the report, analysis.best and a checkpoint, every artifact read from S3."""
    work, _, s3, _ = cluster_run
    assert rc(work, "down") == 0
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    s3.client().download_file(s3.bucket, "iabf/mlflow/mlflow.db", str(tmp_path / "mlflow.db"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name.endswith("-smoke")]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.info.artifact_uri.startswith("s3://studies/iabf/mlflow/artifacts/") for r in runs)
    report = subprocess.run([sys.executable, "-m", "analysis.report", "--tracking-uri", uri, "--study", exp.name,
                             "--out", str(tmp_path / "report")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "table1.md").is_file() and list((tmp_path / "report").glob("fig3_markov_chain_*.png"))
    best = subprocess.run([sys.executable, "-m", "analysis.best", "--study", exp.name, "--tracking-uri", uri],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert best.returncode == 0 and "runs:/" in best.stdout, best.stderr[-2000:]


def test_the_readmes_tunnel_reaches_mlflow_on_the_heads_private_address(cluster_run):
    work, *_ = cluster_run
    out = read(work, "tunnel.log")
    assert rc(work, "tunnel") == 0 and "HEAD_PRIVATE=10.77.0.1" in out and "through the tunnel: 200" in out, out[-3000:]


def test_ray_down_leaves_no_process_behind(cluster_run):
    work, *_ = cluster_run
    assert rc(work, "down") == 0, read(work, "down.log")[-3000:]
    left = [line for line in read(work, "left.txt").splitlines()
            if not re.search(r"ray_up_node\.sh|ps -ww -eo|sshd|registry_proxy", line)]
    assert not left, left                                  # within a minute of `ray down`
    print(f"\nray up {read(work, 'up.s').strip()} s, the study by ray exec {read(work, 'study.s').strip()} s, ray down "
          f"{read(work, 'down.s').strip()} s, then {read(work, 'gone.s').strip()} s until no process was left")
