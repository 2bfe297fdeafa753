import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Fuzz tests: a fixed number of examples, derandomized, so CI tries the same cases on every run.
# HYPOTHESIS_PROFILE=explore draws new cases (for looking for bugs by hand, not for CI).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", deadline=None, database=None, max_examples=2000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (the project's offline copies): IABF_DATA_DIR, else ../shared/data."""
    d = Path(os.environ.get("IABF_DATA_DIR", ROOT.parent / "shared" / "data"))
    if not (d / "mnist.npz").exists():
        pytest.skip(f"real data not found in {d}: set IABF_DATA_DIR to a folder holding mnist.npz")
    return d


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


def pytest_collection_modifyitems(items):
    """Files with the most slow end-to-end tests first, each file's tests in their own order: make
    test hands whole files to its workers (pytest-xdist --dist loadfile: a module's fixture, such as
    test_ablation_tables' study, is built once), so the long files start early and the quick ones
    fill the workers' last minutes instead of one worker finishing a long file alone."""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: (-slow[item.path], str(item.path)))   # stable: a file keeps its order
