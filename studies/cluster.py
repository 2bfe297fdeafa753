"""Connecting the study driver to Ray, the way Ray users expect of `ray.init()`.

- `--address HOST:PORT` (or `auto`, or `RAY_ADDRESS`): join that cluster, or fail with one line.
- no address: join the cluster started on this machine (`ray start`, which `ray up` runs on the
  head), else start a local Ray. An address left behind by a cluster that has died is said in a
  warning, and the study goes on locally.
- Token authentication (Ray's default once a token exists): a driver joining a cluster by address
  sends the token this machine has (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`),
  by Ray's documented switch `RAY_AUTH_MODE=token`. A refused token is said as such, with the fix.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

TOKEN_HELP = ("the cluster uses token authentication and this machine has no matching token: copy the head's "
              "~/.ray/auth_token here (or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH), then run again")


def reachable(address: str, timeout: float = 3.0) -> bool:
    """Does anything answer at HOST:PORT? (Ray itself retries a dead address for a long time.)"""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or address, int(port or 6379)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def check_address(address: str | None) -> None:
    """Fail fast, before anything is written, on an explicit address nobody answers at."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local") or reachable(address):
        return
    raise ConnectionError(f"cannot reach the Ray cluster at {address!r}; use --address auto on the head node, "
                          f"HOST:PORT of a running Ray head, or no --address for a local Ray")


def local_cluster() -> str | None:
    """The address of the cluster last started on this machine (`ray start`), as `ray.init()`
    finds it: Ray's address file in its temp dir ($RAY_TMPDIR, else /tmp/ray)."""
    from ray._private.utils import read_ray_address   # Ray's own lookup; no public API exposes it

    return read_ray_address()


def send_token_if_any() -> None:
    """Turn token authentication on for this driver when it has a token (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset: Ray's own rule for a
    cluster it finds itself, applied to one given by address. A cluster without authentication
    ignores the token, so sending it is always safe."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:   # Ray's helper: it also refreshes Ray's already loaded settings, which the variable alone does not
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:   # a Ray without it: the documented variable, before Ray reads its settings
        if os.environ.get("RAY_AUTH_TOKEN") or any(Path(p).expanduser().is_file() for p in (
                os.environ.get("RAY_AUTH_TOKEN_PATH", ""), "~/.ray/auth_token") if p):
            os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(address: str | None, **init) -> str:
    """ray.init() for a study; returns the line that says what happened (printed first). Raises
    ConnectionError with one line (that names the address and, for a refused token, the fix)."""
    import ray

    explicit, found = address or os.environ.get("RAY_ADDRESS") or None, None
    if explicit is None:
        found = local_cluster()
        if found and not reachable(found):
            print(f"warning: the Ray cluster last started on this machine (at {found}) is gone; starting a local "
                  f"Ray instead (`ray stop` forgets the old address)", file=sys.stderr, flush=True)
            found = None
        target = found or "local"
        if target == "local":   # Ray's idle workers for the first driver: a trial's actor starts a process of
            # its own, so they only held memory and CPU (num_cpus Python processes, each importing Ray)
            init = {**init, "_system_config": {"prestart_worker_first_driver": False}}
    else:
        target = explicit
        if target != "local":
            send_token_if_any()
    try:
        # the cluster of this machine: let ray.init find it (and turn on its token, if this machine has one)
        ray.init(address=None if target == found else target, **init)
    except (ConnectionError, RuntimeError, ValueError) as e:
        chain, cause = [], e
        while cause is not None:
            chain.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        why = TOKEN_HELP if any("Authentication" in c or "auth token" in c.lower() for c in chain) else \
            " ".join(str(e).split())[:300]
        raise ConnectionError(f"cannot join the Ray cluster at {target!r}: {why}") from None
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), resources.get("GPU", 0)
    if target == "local":
        return f"started a local Ray with {cpus} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    where = ray.get_runtime_context().gcs_address
    return f"joined the Ray cluster at {where}: {nodes} node(s), {cpus} CPUs, {gpus:g} GPUs"


def check_fits(resources: dict, local: bool) -> str | None:
    """A trial's request against the nodes there are (call after connect). On a local Ray, which
    cannot grow, a request no node can satisfy is refused (ValueError, one line with what the nodes
    have); on a cluster, which an autoscaler may grow, it is a warning to print (returned), since
    Ray's own "insufficient resources" message goes only to the study's log."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    want = {"CPU": float(resources.get("cpu", 1)), "GPU": float(resources.get("gpu", 0))}
    if any(all(n.get(k, 0.0) >= v for k, v in want.items() if v) for n in nodes):
        return None
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no nodes"
    asked = f"{want['CPU']:g} CPUs and {want['GPU']:g} GPUs per trial"
    if local:
        raise ValueError(f"resources: {asked}, but no node of this Ray has that (nodes: {have}); lower "
                         f"resources.cpu / resources.gpu or --gpus-per-trial, or join a cluster that has it (--address)")
    return (f"warning: no node of the cluster has {asked} now (nodes: {have}); the trials wait until an "
            f"autoscaler adds such a node, and forever if none does")


def launch_failures() -> dict[str, str]:
    """What the cluster's autoscaler could not launch, {node type: why}, as `ray status` reports it: autoscaler
    v2's failed launches (what `ray up` runs), or v1's unavailable node types (its report in the GCS). {} when
    nothing failed, or no autoscaler runs."""
    import json

    import ray
    from ray._private import ray_constants

    failed = {}
    with contextlib.suppress(Exception):   # v2: the GCS's cluster status
        from ray.autoscaler.v2.sdk import get_cluster_status

        for launch in get_cluster_status(ray.get_runtime_context().gcs_address, timeout=10).failed_launches:
            failed[launch.ray_node_type_name] = " ".join(str(launch.details or "launch failed").split())[:300]
    with contextlib.suppress(Exception):   # v1: the monitor's report
        from ray.experimental.internal_kv import _internal_kv_get

        report = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or "{}").get("autoscaler_report") or {}
        for kind, record in ((report.get("node_availability_summary") or {}).get("node_availabilities") or {}).items():
            if not record.get("is_available") and (info := record.get("unavailable_node_information")):
                failed[kind] = " ".join(f"{info.get('category')}: {info.get('description')}".split())[:300]
    return failed
