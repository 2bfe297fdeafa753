import os
from pathlib import Path

import pytest
import torch

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
