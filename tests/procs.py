"""Process helpers the tests share: a free loopback port, ending a process tree by pid, a real
`mlflow server` on loopback, an S3 stand-in (moto) on loopback."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_nodes(env: dict, address: str) -> list[dict]:
    """A Ray cluster's live nodes, from a driver that joins it at `address` with `env` (its token):
    [{"NodeID": ..., "Resources": ...}]."""
    import json

    out = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(address='auto', log_to_driver=False); "
                          "print(json.dumps([{'NodeID': n['NodeID'], 'Resources': n['Resources']} "
                          "for n in ray.nodes() if n['Alive']]))"],
                         env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("[")][-1])   # not Ray's log lines


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (a Ray node: GCS, raylet, workers), by pid."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=30)


# as cluster/mlflow_server.sh starts it: without MLflow 3's job runner (seven huey consumers for GenAI jobs a
# study never asks for, about 16 CPU-seconds at each start)
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_server(tmp_path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1 with a sqlite store and served artifacts, up and answering."""
    import requests

    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "server-artifacts")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=SERVER_ENV)
    for _ in range(240):
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return server
        except requests.RequestException:
            time.sleep(0.5)
    stop_server(server)
    pytest.fail("mlflow server did not start")


def stop_server(server: subprocess.Popen) -> None:
    """Ended at once, as a crashed or lost server is (SIGKILL: no wait for uvicorn's graceful shutdown)."""
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@contextlib.contextmanager
def small_disk(folder, size: str):
    """A filesystem of `size` (a tmpfs: `3m`) mounted at `folder` in a mount namespace of its own; yields the
    prefix that runs a command in that namespace (nsenter). Nothing of this machine's mounts changes, and the
    filesystem goes when the context ends."""
    if os.geteuid() != 0 or not shutil.which("nsenter") or not shutil.which("unshare"):
        pytest.skip("needs root, unshare and nsenter (util-linux) for a filesystem of its own")
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                               f"mount -t tmpfs -o size={size} tmpfs '{folder}' && echo mounted && exec sleep infinity"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mounted", "could not mount a tmpfs in a mount namespace"
        yield ["nsenter", "-t", str(holder.pid), "-m", "--"]
    finally:
        holder.kill()
        holder.wait(timeout=30)


def in_namespaces(script, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """bash SCRIPT ARGS in network, mount and pid namespaces of its own (a test cluster: tests/ray_up_node.sh,
    tests/slurm_node.sh), without this machine's Ray, MLflow and SLURM settings; everything it started
    ends with it (--kill-child), and it can touch no port, /tmp/ray or process of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "SLURM_"))}
    return subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
                           "bash", str(script), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def read(folder, name: str) -> str:
    """A file a namespaced test cluster wrote, or a line saying it did not."""
    path = folder / name
    return path.read_text(errors="replace") if path.exists() else f"<{name} not written>"


def keep_or_remove(folder, variable: str) -> None:
    """Remove a test cluster's folder, unless `variable` is set (to look at a failed run's logs)."""
    import shutil

    if not os.environ.get(variable):
        shutil.rmtree(folder, ignore_errors=True)


class S3:
    """An S3 stand-in: moto's server on loopback, with one bucket. `env` is what a process needs to use it
    as AWS (boto3, pyarrow and MLflow read AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL); `url` its address."""

    def __init__(self, bucket: str = "studies", host: str = "127.0.0.1"):
        import requests

        self.port, self.bucket = free_port(), bucket
        self.url = f"http://{host}:{self.port}"
        self.proc = subprocess.Popen([str(shutil.which("moto_server", path=os.path.dirname(sys.executable))),
                                      "-H", host, "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.url, "MLFLOW_S3_ENDPOINT_URL": self.url}
        for _ in range(120):
            with contextlib.suppress(requests.RequestException):
                if requests.put(f"{self.url}/{bucket}", timeout=1).ok:   # the bucket, made
                    return
            time.sleep(0.25)
        self.stop()
        pytest.fail("moto's S3 server did not start")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server for one test; this process (and what it starts) uses it as AWS."""
    server = S3()
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    yield server
    server.stop()
