"""What every node of a cluster must reach, settled before any trial starts.

- The study's folder on its storage: the driver writes a random token into it (iabf.storage.MARK) and
  asks each live node, with a zero-CPU Ray task pinned to it, whether it reads the same token back. A
  folder on the head's own disk, which a worker does not have, is refused in one line that names the
  nodes and the fix. A node that joins later (an autoscaler's) checks the same mark when its first
  trial starts (iabf/tune.py), and the study stops there, before that trial trains.
- The datasets: copied once to <storage>/datasets/<sha256 prefix>/<file>, so that a trial on a node
  that lacks one (a worker that joined before the dataset was prepared on the head, or one whose disk
  is its own) fetches it from there (iabf.data.on_this_node).

On a local Ray that this study started (one machine) neither is needed, and nothing is done.
"""
from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from iabf.data import source_file
from iabf.storage import copy, mark_problem, size_of, write_mark

CHECK_TIMEOUT_S = 60   # for every live node to answer: a node busy starting its first worker takes seconds
SHARED_HELP = ("a study on more than one node needs storage that every node reaches: --storage s3://BUCKET/PREFIX "
               "(or gs://...), or a folder on a filesystem that every node mounts at the same path (NFS)")


class Unreached(RuntimeError):
    """Nodes that do not see the study's folder: one line, said before any trial starts."""


def check_nodes(experiment_dir: str) -> str:
    """Mark the study's folder and have every live node read the mark back. Returns the token (which the
    trials check again on nodes that join later); raises Unreached naming each node that does not see it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(16)
    write_mark(experiment_dir, token)
    probe = ray.remote(num_cpus=0, max_retries=0)(mark_problem)
    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    asked = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        experiment_dir, token): node for node in nodes}
    ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=CHECK_TIMEOUT_S)
    problems = []
    for ref in ready:
        try:
            problem = ray.get(ref)
        except ray.exceptions.RayError:   # the node went away meanwhile: the next one gets the check at its trial
            continue
        if problem:
            node = nodes[asked[ref]]
            problems.append(f"node {node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}): "
                            f"{problem}")
    if problems:
        raise Unreached(f"--storage: {len(problems)} of the cluster's {len(nodes)} nodes do not see the study's folder "
                        f"({'; '.join(problems)}); {SHARED_HELP}")
    return token


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def publish_datasets(names: list[str], data_dir: str, storage: str) -> dict[str, str]:
    """Each dataset file the study reads (from the driver's data_dir) on the storage, by content: a copy
    already there is not made again. Returns {file name: where on the storage}, for iabf.data.on_this_node."""
    published = {}
    for name in names:
        path = source_file(name, data_dir)
        if path is None:   # digits: scikit-learn's, on every node
            continue
        where = f"{storage.rstrip('/')}/datasets/{sha256(path)[:16]}/{path.name}"
        if size_of(where) != path.stat().st_size:
            copy(str(path), where)
        published[path.name] = where
    return published
