"""The training paths that matter on a GPU, on a CUDA device: a step of each method, stacked seeds,
resume from a checkpoint, divergence. Skipped where no CUDA device is visible (CI, this machine);
`make gpu-check` runs them on a lent GPU (benchmarks/gpu_check.sh)."""
import copy
import math

import pytest
import torch

from iabf import metrics as M
from iabf.config import Config
from iabf.train import Diverged, run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device is visible")]


@pytest.mark.parametrize("method", ["necst", "abf", "iabf"])
def test_each_method_trains_on_the_gpu(method):
    final, [state] = run(Config(dataset="digits", method=method, epochs=2, K=3, device="cuda"))
    assert math.isfinite(final[M.TEST_DISTORTION]) and final[M.EPOCH] == 2
    assert state["model"]["encoder"][next(iter(state["model"]["encoder"]))].is_cuda


def test_stacked_seeds_train_on_the_gpu_each_its_own():
    final, states = run(Config(dataset="digits", method="iabf", epochs=2, K=3, stack=4, device="cuda"))
    assert [s["config"]["seed"] for s in states] == [0, 1, 2, 3]
    assert len({final[M.seed_key(s, M.TEST_DISTORTION)] for s in range(4)}) == 4


def test_resume_on_the_gpu_continues_exactly():
    cfg = Config(dataset="digits", method="iabf", epochs=3, K=3, device="cuda")
    straight, saved = [], {}
    run(cfg, lambda m, c: (straight.append(m), saved.setdefault(m[M.EPOCH], copy.deepcopy(c()))))
    resumed = []
    run(cfg, lambda m, _: resumed.append(m), resume=saved[1])
    for a, b in zip(straight[1:], resumed):
        assert a[M.VAL_DISTORTION] == pytest.approx(b[M.VAL_DISTORTION], rel=1e-4)


def test_divergence_on_the_gpu_is_the_same_clear_error():
    with pytest.raises(Diverged, match="training diverged at epoch 1: non-finite training loss"):
        run(Config(dataset="digits", method="necst", epochs=2, K=2, lr=1e30, device="cuda"))


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_bf16_and_tf32_train_on_the_gpu_and_stay_near_fp32(precision):
    base, _ = run(Config(dataset="digits", method="iabf", epochs=2, K=3, device="cuda"))
    final, [state] = run(Config(dataset="digits", method="iabf", epochs=2, K=3, device="cuda", precision=precision))
    assert math.isfinite(final[M.TEST_DISTORTION]) and final[M.TEST_DISTORTION] == pytest.approx(base[M.TEST_DISTORTION], rel=0.1)
    assert all(w.dtype == torch.float32 for w in state["model"]["encoder"].values())
    assert not torch.backends.cuda.matmul.allow_tf32 or precision != "tf32"   # restored after the run's passes
