"""cluster.yaml against the schema Ray ships, its security rules, and fractional GPUs in Ray."""
import json
from pathlib import Path

import jsonschema
import pytest
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


def test_no_port_but_ssh_is_open_to_the_internet():
    rules = CLUSTER["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or \
            any(r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", []))
        if world:
            assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (22, 22, "tcp"), rule


def test_uis_listen_on_private_addresses_only():
    head = " ".join(CLUSTER["head_setup_commands"] + CLUSTER["head_start_ray_commands"])
    assert "mlflow server" in head and "--serve-artifacts" in head and "sqlite:///" in head
    assert "0.0.0.0" not in head and "--dashboard-host=127.0.0.1" in head
    assert "--host \"$(hostname -I" in head                        # the head's private address


@pytest.fixture
def ray_with_a_gpu():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)  # a declared GPU: the scheduler's view
    yield
    ray.shutdown()


def test_fractional_gpu_trials_share_one_declared_gpu(ray_with_a_gpu, tmp_path):
    from ray import tune

    from iabf.config import Config
    from iabf.tune import trial_device

    def probe(config):
        import time
        start = time.time()
        time.sleep(8)  # long enough that two trials overlap if the scheduler packs them, even if one starts late
        tune.report({"gpus": len(ray.get_gpu_ids()), "device": trial_device(Config(device="auto")),
                     "start": start, "end": time.time()})

    grid = tune.Tuner(tune.with_resources(probe, {"cpu": 1, "gpu": 0.5}),
                      param_space={"i": tune.grid_search([0, 1])},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    results = [r.metrics for r in grid]
    assert not grid.errors and len(results) == 2
    assert all(m["gpus"] == 1 for m in results)                  # each trial was given the GPU
    assert all(m["device"] == "cpu" for m in results)            # ... but no CUDA here: CPU, no crash
    a, b = sorted(results, key=lambda m: m["start"])
    assert b["start"] < a["end"]                                 # 0.5 + 0.5: both ran at once
