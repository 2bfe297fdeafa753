"""The objective's terms: VIMCO (eq. 31), the TC estimate (eq. 13-14), infomax (eq. 27), the adversary."""
import math

import pytest
import torch

from iabf.config import Config
from iabf.data import load, to_float
from iabf.losses import (adversary, binary_entropy, discriminator_loss, distortion, infomax, log_likelihood, objective,
                         permute_dims, tc_estimate, vimco)
from iabf.models import build, discriminator


def test_distortion_on_a_hand_computed_example():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])           # one 1x2x2 image
    logits = torch.zeros(1, 1, 2, 2)                          # sigmoid -> 0.5 everywhere
    # squared error summed over pixels: 0.25 + 0.25 + 0 + 0.0625
    assert distortion(logits, x, binary=False).item() == pytest.approx(0.5625)
    xb = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    # BCE per pixel of p = 0.5 is log 2 for every pixel, averaged (not summed)
    assert distortion(logits, xb, binary=True).item() == pytest.approx(math.log(2))
    lb = torch.tensor([[[[-2.0, 3.0], [0.0, 1.0]]]])
    by_hand = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-3)) + math.log(2) + math.log1p(math.exp(1))) / 4
    assert distortion(lb, xb, binary=True).item() == pytest.approx(by_hand, rel=1e-6)


def test_vimco_value_is_the_k_sample_bound_and_gradients_are_finite():
    f = torch.randn(5, 7, requires_grad=True)
    log_q = torch.randn(5, 7, requires_grad=True)
    out = vimco(f, log_q)
    assert torch.allclose(out, torch.logsumexp(f, 0) - math.log(5))
    out.sum().backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(log_q.grad).all()
    # decoder side: the importance weights softmax(f)
    assert torch.allclose(f.grad, torch.softmax(f.detach(), 0), atol=1e-6)


def test_vimco_leave_one_out_signal_for_k2_by_hand():
    """K = 2: replacing sample k by the mean of the others gives L_{-k} = f_other, so the
    learning signal of sample k is L - f_other."""
    f = torch.tensor([[1.0], [3.0]])
    log_q = torch.zeros(2, 1, requires_grad=True)
    vimco(f, log_q).sum().backward()
    L = math.log((math.e ** 1 + math.e ** 3) / 2)
    assert log_q.grad.flatten().tolist() == pytest.approx([L - 3.0, L - 1.0], rel=1e-5)


def test_vimco_training_lowers_the_loss_on_real_digits():
    torch.manual_seed(0)
    data = load("digits", "unused")
    x = to_float(data.train[:200])
    enc, dec, _ = build("digits", data.image_shape, 16)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    cfg = Config(dataset="digits", method="necst", K=5, weight_decay=0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, _ = objective(dec, None, enc, x, torch.sigmoid(enc(x)), None, False, cfg, g)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def train_tc(codes: torch.Tensor, steps=400) -> float:
    """Fit the discriminator to `codes` (B, M) as in Algorithm 1 and return TC_hat (eq. 14)."""
    torch.manual_seed(0)
    disc = discriminator(codes.shape[1], 64)
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = discriminator_loss(disc, codes[torch.randint(len(codes), (256,), generator=g)], g)
        opt.zero_grad(), loss.backward(), opt.step()
    with torch.no_grad():
        return tc_estimate(disc, codes).item()


def test_tc_estimate_near_zero_for_independent_bits_and_positive_for_duplicated_bits():
    g = torch.Generator().manual_seed(2)
    independent = torch.bernoulli(torch.full((4000, 8), 0.5), generator=g)
    half = torch.bernoulli(torch.full((4000, 4), 0.5), generator=g)
    duplicated = torch.cat([half, half], 1)                # true TC = 4 log 2 = 2.77 nats
    tc_ind, tc_dup = train_tc(independent), train_tc(duplicated)
    assert abs(tc_ind) < 0.15         # a classifier cannot tell a batch from its permutation
    assert tc_dup > 1.5               # clearly positive, on the way to 2.77


def test_permute_dims_keeps_each_marginal_and_breaks_dependence():
    g = torch.Generator().manual_seed(3)
    half = torch.bernoulli(torch.full((2000, 3), 0.5), generator=g)
    y = torch.cat([half, half], 1)
    z = permute_dims(y, g)
    assert torch.equal(z.sort(0).values, y.sort(0).values)           # same multiset per bit
    assert (z[:, :3] == z[:, 3:]).float().mean() < 0.6               # the copies no longer agree


def test_infomax_rewards_balanced_deterministic_bits():
    disc = discriminator(4, 16)
    for p_ in disc.parameters():
        torch.nn.init.zeros_(p_)                               # TC_hat = 0: isolate the entropy terms
    balanced = torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0]]).repeat(8, 1)
    constant = torch.ones(16, 4)
    uncertain = torch.full((16, 4), 0.5)
    info = {k: infomax(p, torch.bernoulli(p), disc, "bits")[0].item()
            for k, p in {"balanced": balanced, "constant": constant, "uncertain": uncertain}.items()}
    assert info["balanced"] == pytest.approx(4 * math.log(2), rel=1e-4)   # H(Y_d)=log 2, H(Y_d|X)=0
    assert abs(info["constant"]) < 1e-4 and abs(info["uncertain"]) < 1e-4


def test_binary_entropy_has_finite_gradient_at_saturation():
    p = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    binary_entropy(p).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_adversarial_flips_hurt_more_than_random_flips_of_the_same_size(data_dir):
    """The adversary picks the most vulnerable bits: with the same number of flips, its codes
    reconstruct worse than codes flipped at random."""
    torch.manual_seed(0)
    data = load("mnist", data_dir, max_train_examples=2000)
    x = to_float(data.train[:500])
    enc, dec, _ = build("mnist", data.image_shape, 100)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    cfg = Config(dataset="mnist", method="abf", eps=0.05, flip="topk", flip_k=5)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):  # a briefly trained decoder, so gradients are meaningful
        loss, _ = objective(dec, None, enc, x, torch.sigmoid(enc(x)), None, False,
                            Config(dataset="mnist", method="necst", eps=0.05), g)
        opt.zero_grad(), loss.backward(), opt.step()
    with torch.no_grad():
        y = torch.bernoulli(torch.sigmoid(enc(x)), generator=g)
    adv = y.clone()
    eps = adversary(dec, x, y, False, cfg, g)
    adv = torch.where(eps >= 1, 1 - y, y)                     # topk: eps* is 0 or 1
    n_flips = (adv != y).sum(-1)
    rnd = y.clone()
    for i, n in enumerate(n_flips.tolist()):
        idx = torch.randperm(100, generator=g)[:n]
        rnd[i, idx] = 1 - rnd[i, idx]
    with torch.no_grad():
        d_adv = -log_likelihood(dec(adv), x, False).mean()
        d_rnd = -log_likelihood(dec(rnd), x, False).mean()
    assert n_flips.float().mean() > 1
    assert d_adv > d_rnd


@pytest.mark.parametrize("method", ["necst", "abf", "iabf"])
@pytest.mark.parametrize("channel", ["bsc", "bec"])
def test_objective_gives_finite_gradients_to_every_network(method, channel):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    enc, dec, disc = build("digits", (1, 8, 8), 16)
    cfg = Config(dataset="digits", method=method, channel=channel, K=3, clean_weight=0.1)
    g = torch.Generator().manual_seed(0)
    p = torch.sigmoid(enc(x))
    y = torch.bernoulli(p.detach(), generator=g)
    loss, stats = objective(dec, disc, enc, x, p, y, False, cfg, g)
    loss.backward()
    assert torch.isfinite(loss)
    for net in (enc, dec):
        assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in net.parameters())
    assert ("tc" in stats) == (method == "iabf")


def test_cifar_conv_model_shapes_and_a_step():
    enc, dec, disc = build("cifar10", (3, 32, 32), 500)
    x = torch.rand(4, 3, 32, 32)
    p = torch.sigmoid(enc(x))
    assert p.shape == (4, 500)
    assert dec(torch.zeros(2, 4, 500)).shape == (2, 4, 3, 32, 32)
    cfg = Config(dataset="cifar10", method="iabf", K=2)
    loss, _ = objective(dec, disc, enc, x, p, torch.bernoulli(p.detach()), False, cfg)
    loss.backward()
    assert torch.isfinite(loss)


def test_the_reference_vimco_weights_the_worst_samples_and_the_papers_the_best():
    """vimco_signal: the paper's eq. 31 weights each sample's reconstruction gradient by
    softmax(log-likelihood); the reference code (positive loss in the log-sum-exp, minimised) by
    softmax(loss), so the worst sample weighs most. objective() uses one or the other, as asked."""
    ll = torch.tensor([[-1.0], [-5.0], [-2.0]], requires_grad=True)      # sample 1 is the worst
    log_q = torch.zeros(3, 1)
    paper = torch.autograd.grad(vimco(ll, log_q).sum(), ll)[0]           # maximised
    reference = torch.autograd.grad(-vimco(-ll, log_q).sum(), ll)[0]     # maximised: -(minimised loss)
    assert torch.allclose(paper, torch.softmax(ll.detach(), 0)) and paper.argmin() == 1
    assert torch.allclose(reference, torch.softmax(-ll.detach(), 0)) and reference.argmax() == 1
    x = torch.rand(3, 1, 8, 8)
    enc, dec, _ = build("digits", (1, 8, 8), 16)
    losses = {s: objective(dec, None, enc, x, torch.sigmoid(enc(x)), None, False,
                           Config(dataset="digits", method="necst", K=4, weight_decay=0, vimco_signal=s),
                           torch.Generator().manual_seed(1))[0].item() for s in ("loglik", "loss")}
    # the same samples: log-mean-exp of the loss is above minus log-mean-exp of the log-likelihood
    assert losses["loss"] > losses["loglik"] > 0
