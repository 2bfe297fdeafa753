import json
import os
from collections import Counter
from pathlib import Path

import pytest

# one OpenMP thread in every process a test starts (training CLIs, Ray's trials): make test's workers
# outnumber the cores, and an OpenMP thread that waits for a core spins on it
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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
    torch.set_num_threads(1)   # the same on every machine; and see OMP_NUM_THREADS above
    yield


DURATIONS = Path(__file__).with_name("durations.json")   # seconds per file, as measured by --store-durations


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test file's seconds (setup, call, teardown) to {DURATIONS.name}: make test's "
                          "order for its workers")


def pytest_collection_modifyitems(items):
    """The longest files first (tests/durations.json; a file not in it counts 30 s a slow test), each file's
    tests in their own order: make test hands whole files to its workers (pytest-xdist --dist loadfile: a
    module's fixture, such as test_slurm's cluster, is built once), so the long files start early and the quick
    ones fill the workers' last minutes instead of one worker finishing a long file alone. A stale durations
    file only makes that order worse, never a test wrong."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    slow = Counter(item.path for item in items if item.get_closest_marker("slow") is not None)
    seconds = {item.path: known.get(item.path.relative_to(ROOT).as_posix(), 30 * slow[item.path]) for item in items}
    items.sort(key=lambda item: (-seconds[item.path], str(item.path)))   # stable: a file keeps its order


_measured: Counter = Counter()


def pytest_runtest_logreport(report):   # on the controller, for every worker's report
    _measured[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session):
    if session.config.getoption("store_durations") and not hasattr(session.config, "workerinput"):
        DURATIONS.write_text(json.dumps({f: round(s) for f, s in sorted(_measured.items())}, indent=1) + "\n")
