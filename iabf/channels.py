"""Binary channels and the adversarial bit flip, as pure tensor functions.

Shapes: p, y: (B, M) per image and bit; codes drawn for VIMCO: (K, B, M). `eps` may be a float
or a per-bit tensor broadcastable to (B, M), which is how the adversary (eq. 30) reuses them.
Every random draw takes an explicit torch.Generator, so a run is reproducible from its seed.

A channel is one row of CHANNELS (at the end): how it composes with the encoder's probabilities,
how it corrupts a code, which flips the adversary may make on it and what a received symbol says
about the sent bit. Adding one: docs/extending.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

ERASED = 0.5      # what the decoder sees for an erased bit: halfway between 0 and 1, no information
CLIP = 1e-7       # Bernoulli parameters are kept in [CLIP, 1 - CLIP], as in the reference code


def compose(p: torch.Tensor, eps) -> torch.Tensor:
    """Eq. 18 (and eq. 30 with per-bit eps*): P(received bit = 1) when a Bernoulli(p) bit
    crosses a BSC that flips it with probability eps: p - 2 p eps + eps."""
    return (p - 2 * p * eps + eps).clamp(CLIP, 1 - CLIP)


def compose_z(p: torch.Tensor, eps) -> torch.Tensor:
    """The Z-channel's eq. 18: a 1 survives with probability 1 - eps, a 0 always: p (1 - eps)."""
    return (p * (1 - eps)).clamp(CLIP, 1 - CLIP)


def bernoulli_log_prob(y: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log Bernoulli(y; p) summed over bits (only where mask is 1): (..., B, M) -> (..., B). In float32
    (precision.py): 1 - CLIP is 1 in bf16."""
    p = p.float().clamp(CLIP, 1 - CLIP)
    lp = y * p.log() + (1 - y) * (-p).log1p()
    return (lp if mask is None else lp * mask).sum(-1)


def bernoulli(p: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli(p) draw as uniform noise below p. Unlike torch.bernoulli, which checks p in
    [0, 1] on some CPU code paths and not on others (and asserts on the GPU), a NaN p gives a
    finite bit here and a NaN loss downstream, so a diverged run fails the same way everywhere
    (train.Diverged). Under vmap (gen None) the noise is rand_like's, batched per seed."""
    u = torch.rand_like(p) if gen is None else torch.rand(p.shape, generator=gen, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def bsc(y: torch.Tensor, eps, gen: torch.Generator | None = None) -> torch.Tensor:
    """Binary symmetric channel (eq. 17): each bit flipped independently with probability eps."""
    flips = torch.rand(y.shape, generator=gen, device=y.device) < eps
    return torch.where(flips, 1 - y, y)


def bec(y: torch.Tensor, eps, gen: torch.Generator | None = None) -> torch.Tensor:
    """Binary erasure channel: each bit erased (replaced by ERASED) with probability eps."""
    erased = torch.rand(y.shape, generator=gen, device=y.device) < eps
    return torch.where(erased, torch.full_like(y, ERASED), y)


def z(y: torch.Tensor, eps, gen: torch.Generator | None = None) -> torch.Tensor:
    """Z-channel: each 1 becomes 0 with probability eps; a 0 always arrives as 0."""
    drops = torch.rand(y.shape, generator=gen, device=y.device) < eps
    return torch.where(drops, torch.zeros_like(y), y)


def transmit(p: torch.Tensor, eps, channel: str, gen: torch.Generator | None = None):
    """One code per image through the channel, as at test time (the reference's one sample at the
    test noise). Returns (sent bits, received symbols), both (B, M)."""
    y = bernoulli(p, gen)
    return y, CHANNELS[channel].corrupt(y, eps, gen)


def sample_noisy(p: torch.Tensor, eps, channel: str, K: int, gen: torch.Generator | None = None):
    """K received codes per image from p_noisy(y|x) (eq. 17-18), with log p_noisy for the score
    function of VIMCO. p: (B, M) -> received (K, B, M) (no gradient), log_prob (K, B) (gradient to p).

    A channel whose output is a bit (BSC, Z): the received bit is Bernoulli(compose(p, eps)), so
    sample that directly (eq. 18). BEC: an erasure does not depend on the encoder, so only
    unerased bits carry log-probability.
    """
    pk = p.detach().expand(K, *p.shape)
    ch = CHANNELS[channel]
    if ch.compose is not None:
        y = bernoulli(ch.compose(pk, eps), gen)
        return y, bernoulli_log_prob(y, ch.compose(p, eps))
    y = bernoulli(pk, gen)
    received = ch.corrupt(y, eps, gen)
    return received, bernoulli_log_prob(y, p, mask=(received != ERASED).to(p.dtype))


# --- adversarial bit flip (eq. 23-26, 30) ---------------------------------------------------

def flip_mask(y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Eq. 25: m = y XOR (sign(g)/2 + 0.5). A bit may flip only if flipping it raises the
    reconstruction loss: 0 -> 1 where dLoss/dy > 0, 1 -> 0 where dLoss/dy < 0.
    (The reference code compares the Gumbel noise instead of y here; this is the paper's rule.)"""
    return (y != (grad > 0).to(y.dtype)).to(y.dtype)


def budget_eps(grad: torch.Tensor, budget: float) -> torch.Tensor:
    """Per-bit noise eps_i proportional to |g_i| with sum_i eps_i = M*budget and 0 <= eps_i <= 1
    (text after eq. 30). Proportional allocation with a cap at 1 is water-filling: with the top k
    bits capped, the rest get c*|g_i|, c = (M*budget - k) / sum of the rest; the right k is the
    first for which the largest uncapped bit stays <= 1. Exact, vectorised over the batch."""
    a, _ = grad.abs().sort(dim=-1, descending=True)                 # (B, M)
    M = a.shape[-1]
    k = torch.arange(M, device=a.device, dtype=a.dtype)
    tail = a.flip(-1).cumsum(-1).flip(-1)                            # tail[k] = sum_{j>=k} a_j
    c = (M * budget - k) / tail.clamp_min(1e-20)
    ok = (c * a <= 1) & (k <= M * budget)
    first = ok.to(torch.uint8).argmax(-1, keepdim=True)              # smallest valid k
    return (c.gather(-1, first) * grad.abs()).clamp(max=1.0)


def topk_eps(grad: torch.Tensor, k: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """The reference code's variant: draw k bits by Gumbel-top-k from softmax(g^2) and give them
    eps_i = 1 (a certain flip once the sign mask allows it)."""
    u = torch.rand(grad.shape, generator=gen, device=grad.device).clamp_(1e-10, 1 - 1e-10)
    scores = grad.pow(2) - (-u.log()).log()                         # log-softmax + Gumbel, up to a constant
    idx = scores.topk(min(k, grad.shape[-1]), dim=-1).indices
    return torch.zeros_like(grad).scatter_(-1, idx, 1.0)


def ones_mask(y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The Z-channel's eq. 25: only a 1 can be flipped (to 0), and only where that raises the loss."""
    return flip_mask(y, grad) * y


def adversarial_eps(y: torch.Tensor, grad: torch.Tensor, flip: str, budget: float, k: int,
                    gen: torch.Generator | None = None, channel: str = "bsc") -> torch.Tensor:
    """eps* = eps_i * m_i (eq. 25, 30): the adversary's per-bit noise for codes y (B, M), given the
    gradient of the reconstruction loss with respect to y; m_i: the flips `channel` can make."""
    eps = budget_eps(grad, budget) if flip == "budget" else topk_eps(grad, k, gen)
    return eps * CHANNELS[channel].mask(y, grad)


# --- what a received symbol says about the sent bit (a channel decoder's input) -------------------

LLR_MAX = 20.0    # a certain symbol (eps = 0, a Z-channel's 1, an unerased BEC bit): Sionna's own clip


def _log_odds(eps: float) -> float:
    """log((1 - eps) / eps), clipped to LLR_MAX."""
    return LLR_MAX if eps <= 0 else min(LLR_MAX, math.log((1 - eps) / eps))


def llr_bsc(r: torch.Tensor, eps: float) -> torch.Tensor:
    """log P(sent 1 | r) / P(sent 0 | r) for equally likely bits: +-log((1 - eps) / eps)."""
    return (2 * r - 1) * _log_odds(eps)


def llr_bec(r: torch.Tensor, eps: float) -> torch.Tensor:
    """An erasure says nothing (0); an arrived bit is certain."""
    return torch.where(r == ERASED, torch.zeros_like(r), (2 * r - 1) * LLR_MAX)


def llr_z(r: torch.Tensor, eps: float) -> torch.Tensor:
    """A 1 arrives only if a 1 was sent (certain); a 0 is a sent 0, or a sent 1 dropped: log eps."""
    return torch.where(r > 0.5, torch.full_like(r, LLR_MAX), torch.full_like(r, max(-LLR_MAX, math.log(eps)) if eps > 0 else -LLR_MAX))


# --- the channels -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Channel:
    """One channel: compose(p, eps) = P(received bit = 1) for a Bernoulli(p) bit (None where what
    arrives is not a bit: the BEC's erasures), corrupt(y, eps, gen) what a code looks like after it,
    and mask(y, grad) which of a code's bits the adversary may attack (eq. 25): its per-bit noise
    eps* then goes through the same channel (eq. 30); llr(r, eps) the log-likelihood ratio of a
    sent 1 over a sent 0 given what arrived (positive for 1, Sionna's sign), for a channel decoder
    (separation.py). Its name and what it is in words: iabf.config.CHANNELS; its capacity:
    iabf.capacity.CAPACITY (both torch-free)."""
    compose: Callable | None
    corrupt: Callable
    mask: Callable
    llr: Callable


CHANNELS = {
    "bsc": Channel(compose, bsc, flip_mask, llr_bsc),
    # erasing moves a bit to ERASED = 0.5, in the same direction as flipping it: the adversary erases
    # the bits whose flip would raise the loss (eq. 25's rule), with eq. 30's budget
    "bec": Channel(None, bec, flip_mask, llr_bec),
    "z": Channel(compose_z, z, ones_mask, llr_z),
}
