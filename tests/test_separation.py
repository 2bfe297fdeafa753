"""The separation baseline: capacity, the k a 5G code allows, Sionna's LDPC chain, and separation trained
from the CLI and in a study (iabf/capacity.py, iabf/separation.py)."""
import json
import math
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from iabf import channels
from iabf.capacity import CAPACITY, capacity_bits, h2, ldpc_k, ldpc_k_range
from iabf.config import Config, ConfigError
from iabf.separation import ldpc, ldpc_transmit, link, source_code
from iabf.train import evaluate

from conftest import ROOT


def test_capacity_against_known_values():
    assert CAPACITY["bsc"](0.11) == pytest.approx(0.5, abs=1e-3)          # the textbook rate-1/2 point
    assert CAPACITY["bsc"](0.0) == 1.0 and CAPACITY["bsc"](0.5) == pytest.approx(0.0, abs=1e-12)
    assert CAPACITY["bec"](0.3) == pytest.approx(0.7)
    assert CAPACITY["z"](0.5) == pytest.approx(math.log2(1.25))            # log2(1 + (1-p) p^(p/(1-p)))
    assert CAPACITY["z"](0.0) == 1.0
    assert set(CAPACITY) == set(channels.CHANNELS)                       # one capacity per channel row


@given(st.floats(0.0, 0.499), st.floats(0.0, 0.499))
def test_capacity_falls_with_the_noise_and_the_z_channel_carries_more_than_the_bsc(a, b):
    lo, hi = sorted((a, b))
    for c in CAPACITY.values():
        assert c(lo) >= c(hi) - 1e-12
    assert CAPACITY["z"](lo) >= CAPACITY["bsc"](lo) - 1e-12   # a Z-channel's 0s arrive intact
    assert 0 <= h2(lo) <= 1


@given(n=st.integers(13, 5000), eps=st.floats(0.0, 0.499), rate=st.one_of(st.just(0.0), st.floats(0.2, 0.926)))
def test_ldpc_k_is_always_one_5g_allows_and_the_default_stays_below_capacity(n, eps, rate):
    k = ldpc_k(n, eps, "bsc", rate)
    assert k in ldpc_k_range(n) and 0.2 <= k / n <= 948 / 1024 and 12 <= k
    if rate == 0.0 and ldpc_k_range(n)[0] < n * CAPACITY["bsc"](eps):
        assert k < n * CAPACITY["bsc"](eps)
    assert 1 <= capacity_bits(n, eps) <= n


@pytest.mark.parametrize("n", [100, 200, 500])
def test_the_k_range_is_the_one_sionna_accepts(n):
    allowed = ldpc_k_range(n)
    for k in (allowed[0], allowed[-1]):
        ldpc(k, n, 1, "cpu")
    for k in (allowed[0] - 1, allowed[-1] + 1):   # below rate 1/5 refused; above 948/1024 warned, then refused
        with warnings.catch_warnings(), pytest.raises((ValueError, UserWarning)):
            warnings.simplefilter("error")
            ldpc(k, n, 1, "cpu")


@pytest.mark.parametrize("channel", sorted(channels.CHANNELS))
def test_the_chain_without_noise_returns_the_source_bits_exactly(channel):
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(300, 30, generator=gen) < 0.5).float()
    assert torch.equal(ldpc_transmit(y, 100, 0.0, channel, 20, gen), y)   # a wrong LLR sign would not


class Fixed(nn.Module):
    """An encoder that emits fixed, near-certain bits (so the channel chain is all that varies)."""

    def __init__(self, bits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(20 * (2 * bits - 1), requires_grad=False)

    def forward(self, x):
        return self.logits[: len(x)]


def chain_errors(eps: float, rate: float) -> dict:
    cfg = Config(method="separation", dataset="mnist", eps=eps, code_rate=rate)
    k = cfg.latent_bits
    bits = (torch.rand(2000, k, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    images = torch.zeros(2000, 1, 28, 28, dtype=torch.uint8)
    dec = nn.Sequential(nn.Linear(k, 784, bias=False), nn.Unflatten(-1, (1, 28, 28)))
    return evaluate(Fixed(bits), dec, images, False, cfg, seed=0)


def test_bp_corrects_the_channel_below_threshold_and_its_failures_are_counted_above():
    below = chain_errors(0.02, 0.3)                     # rate 0.3 against capacity 0.86
    assert below["bit_error_rate"] < 0.02 / 20 and below["word_error_rate"] < 0.02
    above = chain_errors(0.2, 0.5)                      # rate 0.5 against capacity 0.28: BP fails
    assert above["word_error_rate"] > 0.5 and above["bit_error_rate"] > 0.05


def test_the_bound_and_uncoded_arms_and_their_k():
    bound = Config(method="separation", channel_code="capacity", eps=0.1)   # M = 100 on MNIST
    assert bound.latent_bits == math.floor(100 * CAPACITY["bsc"](0.1)) == 53
    assert Config(method="separation", channel_code="none", eps=0.1).latent_bits == 100
    assert Config(method="separation", eps=0.3).latent_bits == 20              # below every 5G rate: rate 1/5
    assert Config(method="separation", dataset="cifar10", code_rate=0.3).latent_bits == 150
    p = torch.full((4, 53), 0.5)
    sent, received = link(bound)(p, torch.Generator().manual_seed(0))
    assert torch.equal(sent, received)                                           # delivered error-free
    trained = source_code(Config(method="separation", eps=0.3, code_rate=0.4))
    assert trained.method == "necst" and trained.eps == 0.0                      # the source code: no noise
    with pytest.raises(ConfigError, match="code_rate"):
        Config(method="separation", code_rate=0.1)
    with pytest.raises(ConfigError, match="n_bits"):
        Config(method="separation", n_bits=12)


def test_separation_trains_from_the_cli_and_its_run_says_its_code(tmp_path, data_dir):
    out = subprocess.run([sys.executable, "-m", "iabf.train", "--dataset", "mnist", "--method", "separation",
                          "--eps", "0.1", "--code-rate", "0.3", "--epochs", "1", "--max-train-examples", "300",
                          "--val-subset", "300", "--data-dir", str(data_dir.resolve())],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    final = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 <= final["test/word_error_rate"] <= 1 and math.isfinite(final["test/distortion"])
    assert (tmp_path / "runs" / "mnist-separation-ldpc-k30-eps0.1-K5-s0" / "best.pt").exists()
    bad = subprocess.run([sys.executable, "-m", "iabf.train", "--method", "separation", "--code-rate", "0.99"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--code-rate" in bad.stderr


@pytest.mark.slow
def test_the_separation_study_runs_under_smoke(tmp_path, data_dir):
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "ablation.py"), "--storage", str(tmp_path / "r"),
                          "--chain-steps", "5", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--data-dir",
                          str(data_dir.resolve()), "--space", str(ROOT / "search_spaces" / "table1_cpu_separation.yaml"),
                          "--smoke"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 completed" in out.stdout and "separation ldpc" in out.stdout
