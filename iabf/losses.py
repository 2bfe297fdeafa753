"""The paper's objective, one function per term; eq. 29 is assembled in `objective` alone.

Signs: the paper maximises; every `*_loss` and `objective` here returns what is minimised.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .channels import CLIP, adversarial_eps, sample_noisy
from .config import Config
from .models import weight_penalty


def log_likelihood(logits: torch.Tensor, x: torch.Tensor, binary: bool) -> torch.Tensor:
    """log q_phi(x|y) up to a constant, summed over pixels: (..., B, *image) -> (..., B).
    Bernoulli for binary data; for the rest minus the squared error of the sigmoid mean, the
    reference code's learning signal (a Gaussian of fixed variance)."""
    dims = tuple(range(-(x.dim() - 1), 0))
    logits = logits.float()   # a sum over every pixel: float32 under bf16 (precision.py)
    if binary:
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(dims)
    return -(torch.sigmoid(logits) - x).pow(2).sum(dims)


def table1_scale(nll: torch.Tensor, x: torch.Tensor, binary: bool) -> torch.Tensor:
    """Table 1's scale from a per-image negative log-likelihood: BCE per pixel for binary data
    (why BinaryMNIST reads ~0.11-0.25), squared error per image otherwise (MNIST ~13-48)."""
    return nll / x[0].numel() if binary else nll


def distortion(logits: torch.Tensor, x: torch.Tensor, binary: bool) -> torch.Tensor:
    """Per-image distortion on the paper's Table 1 scale (see the reference spec, "Evaluation").

    binary data: binary cross-entropy averaged over pixels (why BinaryMNIST reads ~0.11-0.25);
    otherwise:   squared error of the sigmoid mean in [0,1], summed over pixels (MNIST ~13-48).
    logits: (..., B, *image), x: (B, *image) -> (..., B)
    """
    return table1_scale(-log_likelihood(logits, x, binary), x, binary)


def vimco(log_lik: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Eq. 31 with VIMCO's gradient (Mnih & Rezende 2016), per image.

    log_lik: (K, B) log q_phi(x|y^k), differentiable w.r.t. the decoder.
    log_q:   (K, B) log p(y^k|x), differentiable w.r.t. the encoder (the codes are discrete).
    Returns (B,) whose value is the K-sample bound log (1/K) sum_k q(x|y^k) and whose gradient is
    the bound's pathwise gradient (decoder) plus the score-function term with the leave-one-out
    baseline: sample k replaced by the mean of the others' signals (encoder).
    The reference code put the positive loss inside the log-sum-exp, weighting the worst samples
    most; this is the paper's eq. 31.
    """
    K = log_lik.shape[0]
    log_lik, log_q = log_lik.float(), log_q.float()   # differences of near-equal log-likelihoods (precision.py)
    bound = torch.logsumexp(log_lik, 0) - math.log(K)
    with torch.no_grad():
        f = log_lik.detach()
        if K == 1:  # no other sample to leave out: fall back to the batch mean as baseline
            signal = f - f.mean(-1, keepdim=True)
        else:
            loo = (f.sum(0, keepdim=True) - f) / (K - 1)              # (K, B)
            others = f.unsqueeze(0).repeat(K, 1, 1)                  # others[k, j] = f_j
            i = torch.arange(K, device=f.device)
            others[i, i] = loo                                       # ... with f_k replaced
            signal = bound.unsqueeze(0) - (torch.logsumexp(others, 1) - math.log(K))
    score = (signal * log_q).sum(0)
    return bound + score - score.detach()                            # value: the bound


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """h(p) in nats, elementwise. p is clamped away from {0, 1}: a float32 sigmoid reaches exactly
    1.0 for logits above ~17, where the gradient of p log p would be infinite."""
    p = p.clamp(CLIP, 1 - CLIP)
    return -(p * p.log() + (1 - p) * (-p).log1p())


def permute_dims(y: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1, line 6: permute each bit independently across the batch, turning samples of
    p(y_1..M) into samples of prod_d p(y_d). (The reference code discarded this shuffle.)"""
    B, M = y.shape
    idx = torch.rand(B, M, generator=gen, device=y.device).argsort(0)
    return y.gather(0, idx)


def tc_estimate(disc: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Eq. 14: TC ~ E_p(y)[log C/(1-C)], the logit of 'joint' minus the logit of 'permuted'."""
    z = disc(y).float()   # a difference of two logits: float32 under bf16 (precision.py)
    return (z[:, 0] - z[:, 1]).mean()


def discriminator_loss(disc: nn.Module, y: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 13 as a cross-entropy: the batch labelled 0 (joint), its permutation labelled 1."""
    codes = torch.cat([y, permute_dims(y, gen)])
    labels = torch.cat([torch.zeros(len(y)), torch.ones(len(y))]).long().to(y.device)
    return F.cross_entropy(disc(codes).float(), labels)


def tc_input(p: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """What the discriminator sees. 'bits': the sampled codes of Algorithm 1, with a straight-through
    gradient to p (a discrete sample has none); 'probs': the encoder's probabilities (reference code)."""
    return y + p - p.detach() if kind == "bits" else p


def infomax(p: torch.Tensor, y: torch.Tensor, disc: nn.Module, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 27: L_info = sum_d [H(Y_d) - H(Y_d|X)] - TC_hat, with batch estimates (eq. 11, 14).
    p, y: (B, M). Returns (L_info, TC_hat); L_info is maximised."""
    h_marginal = binary_entropy(p.mean(0)).sum()          # sum_d H(Y_d), from the batch marginal
    h_conditional = binary_entropy(p).sum(-1).mean()      # sum_d H(Y_d|X), averaged over the batch
    tc = tc_estimate(disc, tc_input(p, y, kind))
    return h_marginal - h_conditional - tc, tc


def adversary(dec: nn.Module, x: torch.Tensor, y: torch.Tensor, binary: bool, cfg: Config,
              gen: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial bit flip (eq. 23-26, 30; Fig. 1, black then blue arrows): decode the clean code
    y (B, M), take the gradient of the reconstruction loss w.r.t. the bits, and return the per-bit
    noise eps* (B, M) that attacks the most vulnerable bits under the budget M * cfg.adv_eps."""
    y = y.detach().requires_grad_(True)
    loss = -log_likelihood(dec(y), x, binary).sum()
    (grad,) = torch.autograd.grad(loss, y)
    return adversarial_eps(y.detach(), grad, cfg.flip, cfg.adv_eps, cfg.resolved_flip_k, gen, cfg.channel)


def objective(dec: nn.Module, disc: nn.Module, enc: nn.Module, x: torch.Tensor, p: torch.Tensor,
              y: torch.Tensor | None, binary: bool, cfg: Config, gen: torch.Generator | None = None,
              eps: torch.Tensor | None = None):
    """Eq. 29, minimised: -(L_rec + lambda * L_info), plus the reference code's optional terms.

    x: (B, *image); p = sigmoid(enc(x)): (B, M) with gradient; y: a clean code drawn from p (used
    by the adversary and the infomax term; None for NECST). eps: the adversary's eps* when the
    caller has already computed it (stacked seeds, see stacked.py); None = computed here. Returns (loss, stats) where stats are
    detached per-batch scalars, left on the device so that training never waits on a copy.
    """
    stats = {}
    # --- the channel the training codes cross: eq. 18 (necst) or the adversary's eq. 30 ---
    if cfg.method == "necst":
        eps = cfg.eps
    elif eps is None:
        eps = adversary(dec, x, y, binary, cfg, gen)
    codes, log_q = sample_noisy(p, eps, cfg.channel, cfg.K, gen)     # (K, B, M), (K, B)
    log_lik = log_likelihood(dec(codes), x, binary)                  # (K, B)
    if cfg.vimco_signal == "loglik":
        rec = vimco(log_lik, log_q).mean()                           # L_rec, eq. 28/31
    else:  # the reference code: VIMCO on the positive loss, minimised; its weights favour the worst samples
        rec = -vimco(-log_lik, log_q).mean()
    loss = -rec
    stats["distortion"] = table1_scale(-log_lik.detach(), x, binary).mean()
    # --- infomax (eq. 27), iabf only ---
    if cfg.method == "iabf":
        info, tc = infomax(p, y, disc, cfg.tc_input)
        loss = loss - cfg.lam * info
        stats["tc"] = tc.detach()
    # --- reference-code extras: clean reconstruction (decoder only), encoder L2 ---
    if cfg.clean_weight:
        loss = loss - cfg.clean_weight * log_likelihood(dec(p.detach()), x, binary).mean()
    if cfg.weight_decay:
        loss = loss + cfg.weight_decay * weight_penalty(enc)
    stats["loss"] = loss.detach()
    return loss, stats
