"""Channels (eq. 17-18) and the adversarial bit flip (eq. 25, 30)."""
import math

import pytest
import torch

from iabf.channels import CHANNELS as CHANNELS_TABLE
from iabf.channels import (ERASED, adversarial_eps, bec, bernoulli, bsc, budget_eps, compose, compose_z, flip_mask,
                           sample_noisy, topk_eps, transmit, z)
from iabf.config import Config, ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.5])
def test_bsc_flip_rate_within_3_sigma(eps):
    y = torch.bernoulli(torch.full((400, 100), 0.5), generator=gen(1))
    rate = (bsc(y, eps, gen(2)) != y).float().mean().item()
    sigma = math.sqrt(eps * (1 - eps) / y.numel())
    assert abs(rate - eps) <= 3 * sigma + 1e-12


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.4])
def test_bec_erasure_rate_within_3_sigma_and_keeps_the_rest(eps):
    y = torch.bernoulli(torch.full((400, 100), 0.5), generator=gen(1))
    r = bec(y, eps, gen(2))
    erased = r == ERASED
    assert abs(erased.float().mean().item() - eps) <= 3 * math.sqrt(eps * (1 - eps) / y.numel())
    assert torch.equal(r[~erased], y[~erased])  # an erasure channel never flips


def test_bernoulli_draws_at_rate_p_and_never_raises_on_nan():
    """The one Bernoulli sampler of training and evaluation: the right rate (3 sigma), reproducible
    from its generator, and a NaN probability gives a finite bit instead of an error that some CPUs
    raise and others do not (the NaN then reaches the loss, where divergence is detected)."""
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).expand(20000, 5)
    y = bernoulli(p, gen(3))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    for j, q in enumerate([0.0, 0.1, 0.5, 0.9, 1.0]):
        assert abs(y[:, j].mean().item() - q) <= 3 * math.sqrt(q * (1 - q) / len(y)) + 1e-12
    assert torch.equal(y, bernoulli(p, gen(3)))
    bad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
    assert torch.isfinite(bernoulli(bad, gen(0))).all() and torch.isfinite(bernoulli(bad)).all()


def test_channel_noise_is_reproducible_from_the_generator_and_differs_across_seeds():
    y = torch.bernoulli(torch.full((50, 20), 0.5), generator=gen(1))
    assert torch.equal(bsc(y, 0.2, gen(7)), bsc(y, 0.2, gen(7)))
    assert not torch.equal(bsc(y, 0.2, gen(7)), bsc(y, 0.2, gen(8)))


def test_sampling_from_the_composed_bernoulli_matches_sample_then_flip():
    """Eq. 18: P(received = 1) = p - 2 p eps + eps, which is what sending Bernoulli(p) through a BSC gives."""
    p = torch.tensor([[0.0, 0.2, 0.9, 1.0]]).expand(20000, 4)
    eps = 0.15
    direct = transmit(p, eps, "bsc", gen(3))[1].mean(0)
    composed, _ = sample_noisy(p[:1], eps, "bsc", K=20000, gen=gen(4))
    expected = compose(p[0], eps)
    tol = 3 * torch.sqrt(expected * (1 - expected) / 20000) + 1e-6
    assert torch.all((direct - expected).abs() <= tol)
    assert torch.all((composed.mean((0, 1)) - expected).abs() <= tol)


def test_bec_log_prob_counts_only_unerased_bits():
    p = torch.full((1, 6), 0.8, requires_grad=True)
    received, log_q = sample_noisy(p, 0.5, "bec", K=8, gen=gen(5))
    kept = received != ERASED
    expected = torch.where(received == 1, math.log(0.8), math.log(0.2)) * kept
    assert torch.allclose(log_q, expected.sum(-1), atol=1e-5)


def test_flip_mask_allows_only_loss_ascent_flips():
    y = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    g = torch.tensor([[0.5, -0.5, 0.5, -0.5]])  # gradient of the reconstruction LOSS
    # 0 with g > 0 may go up; 1 with g < 0 may go down; the others would lower the loss
    assert flip_mask(y, g).tolist() == [[1.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("budget", [0.01, 0.1, 0.3, 0.5])
def test_budget_eps_is_proportional_capped_and_spends_the_budget(budget):
    g = torch.randn(64, 100, generator=gen(6)) ** 3  # heavy tails, so some bits hit the cap of 1
    eps = budget_eps(g, budget)
    assert eps.min() >= 0 and eps.max() <= 1 + 1e-6
    assert torch.allclose(eps.sum(-1), torch.full((64,), 100 * budget), rtol=1e-4)
    # below the cap, eps_i / |g_i| is the same constant within an image
    free = (eps < 1 - 1e-6) & (g.abs() > 1e-6)
    ratio = torch.where(free, eps / g.abs(), torch.nan)
    spread = ratio.nan_to_num(0).amax(-1) - torch.where(free, ratio, torch.inf).amin(-1)
    assert torch.all(spread <= 1e-3 * ratio.nan_to_num(0).amax(-1))
    # every capped bit has a gradient at least as large as every uncapped one
    capped = eps >= 1 - 1e-6
    for row in range(64):
        if capped[row].any() and free[row].any():
            assert g[row][capped[row]].abs().min() >= g[row][free[row]].abs().max()


def test_budget_eps_with_zero_gradient_flips_nothing():
    assert torch.equal(budget_eps(torch.zeros(3, 10), 0.2), torch.zeros(3, 10))


@pytest.mark.parametrize("flip", ["budget", "topk"])
def test_adversarial_eps_respects_sign_rule_and_budget(flip):
    y = torch.bernoulli(torch.full((32, 100), 0.5), generator=gen(8))
    g = torch.randn(32, 100, generator=gen(9))
    eps = adversarial_eps(y, g, flip, budget=0.1, k=10, gen=gen(10))
    allowed = flip_mask(y, g).bool()
    assert torch.all(eps[~allowed] == 0)           # never a bit whose flip would lower the loss
    assert eps.min() >= 0 and eps.max() <= 1
    if flip == "budget":
        assert torch.all(eps.sum(-1) <= 100 * 0.1 + 1e-3)
    else:
        assert torch.all((eps > 0).sum(-1) <= 10)


def test_topk_prefers_large_gradients():
    g = torch.zeros(2000, 20)
    g[:, 3] = 5.0  # softmax(g^2) puts almost all mass on bit 3
    picked = topk_eps(g, 1, gen(11))
    assert picked[:, 3].mean() > 0.99


# --- the channel table, the Z-channel -----------------------------------------------------------

def test_every_channel_name_the_config_allows_is_a_row_of_the_table_and_no_other():
    from iabf.config import CHANNELS as NAMES
    from iabf.channels import CHANNELS

    assert set(CHANNELS) == set(NAMES)
    with pytest.raises(ConfigError, match="channel='awgn' is not allowed: one of bsc, bec, z"):
        Config(channel="awgn")
    with pytest.raises(KeyError):      # a name that is no row never falls through to another channel
        transmit(torch.full((2, 4), 0.5), 0.1, "awgn", gen(0))


def test_z_channel_only_turns_ones_into_zeros_at_rate_eps():
    y = torch.bernoulli(torch.full((400, 250), 0.5), generator=gen(20))
    received = z(y, 0.3, gen(21))
    assert torch.all(received[y == 0] == 0)                       # a 0 always arrives as 0
    rate = (received[y == 1] == 0).float().mean().item()
    # 50,000 ones, binomial sd of the rate sqrt(0.3 * 0.7 / 50,000) = 0.002: 5 sd
    assert abs(rate - 0.3) < 0.01


def test_z_channel_composition_matches_sending_through_it():
    p = torch.rand(1, 64, generator=gen(22))
    direct = torch.stack([transmit(p, 0.25, "z", gen(100 + i))[1] for i in range(4000)]).mean(0)
    composed, _ = sample_noisy(p, 0.25, "z", K=4000, gen=gen(23))
    assert torch.allclose(compose_z(p, 0.25), p * 0.75, atol=1e-6)
    # two Monte Carlo means of 4,000 draws each: sd of a difference <= sqrt(2 * 0.25 / 4000) = 0.011
    assert torch.allclose(direct, composed.mean(0), atol=0.05)
    assert torch.allclose(composed.mean(0), p * 0.75, atol=0.04)


@pytest.mark.parametrize("flip", ["budget", "topk"])
def test_an_abf_step_on_the_z_channel_flips_only_ones(flip):
    """The adversary's noise on a Z-channel lands on 1s only, and sent through the channel it turns
    1s into 0s and never a 0 into a 1."""
    torch.manual_seed(0)
    dec = torch.nn.Sequential(torch.nn.Linear(40, 64))
    x = torch.rand(32, 64, generator=gen(24))
    p = torch.rand(32, 40, generator=gen(25))
    y = torch.bernoulli(p, generator=gen(26))
    cfg = Config(dataset="digits", method="abf", channel="z", eps=0.2, flip=flip, n_bits=40)
    from iabf.losses import adversary
    eps = adversary(lambda c: dec(c).view(-1, 1, 8, 8), x.view(-1, 1, 8, 8), y, False, cfg, gen(27))
    assert torch.all(eps[y == 0] == 0) and eps.sum() > 0
    received = CHANNELS_TABLE["z"].corrupt(y, eps, gen(28))
    assert torch.all(received <= y) and (received < y).any()
    codes, _ = sample_noisy(p, eps, "z", K=8, gen=gen(29))
    assert torch.all(codes <= 1) and codes.shape == (8, 32, 40)


def test_flip_k_zero_is_the_channels_own_number_of_flips_in_each_cell():
    assert Config(dataset="mnist", eps=0.1, flip_k=0).resolved_flip_k == 10
    assert Config(dataset="mnist", eps=0.3, flip_k=0).resolved_flip_k == 30
    assert Config(dataset="omniglot", eps=0.1, flip_k=0).resolved_flip_k == 20
    assert Config(dataset="cifar10", eps=0.4, flip_k=0).resolved_flip_k == 200
    assert Config(dataset="mnist", eps=0.3, flip_k=10).resolved_flip_k == 10      # the reference's fixed 10
    assert Config(dataset="mnist", eps=0.001, flip_k=0).resolved_flip_k == 1      # never none
    with pytest.raises(ConfigError, match="flip_k=-1 is not allowed"):
        Config(flip_k=-1)
