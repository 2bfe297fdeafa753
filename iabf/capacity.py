"""What a channel can carry and which codes 5G allows: the arithmetic of the separation baseline.

Torch-free (Config resolves a separation arm's k with it, and studies plan without torch).
The chain itself (Sionna's encoder and belief-propagation decoder) is in iabf/separation.py.
"""
from __future__ import annotations

import math


def h2(eps: float) -> float:
    """Binary entropy in bits."""
    return 0.0 if eps in (0.0, 1.0) else -eps * math.log2(eps) - (1 - eps) * math.log2(1 - eps)


def z_capacity(eps: float) -> float:
    """The Z-channel (a 1 becomes 0 with probability eps): log2(1 + (1 - eps) eps^(eps / (1 - eps)))."""
    if eps >= 1.0:
        return 0.0
    return math.log2(1 + (1 - eps) * (eps ** (eps / (1 - eps)) if eps > 0 else 1.0))


# Capacity in bits per channel use, one entry per row of iabf.channels.CHANNELS (a test keeps them equal)
CAPACITY = {"bsc": lambda eps: 1 - h2(eps), "bec": lambda eps: 1 - eps, "z": z_capacity}

# 3GPP TS 38.212 as Sionna's LDPC5GEncoder implements it: 12 <= k <= 8448 information bits and a
# rate k/n in [1/5, 948/1024] (Sionna warns above 948/1024, the standard's limit, and refuses above 0.95).
# Below 1/5 the standard repeats bits outside the code (Sionna does not):
# where C(eps) < 1/5 (BSC: eps > 0.243) no 5G code runs below capacity.
K_MIN, K_MAX = 12, 8448
RATE_MIN, RATE_MAX = 1 / 5, 948 / 1024


def ldpc_k_range(n: int) -> range:
    """The k a 5G LDPC code allows for n coded bits (empty below n = 13)."""
    return range(max(K_MIN, math.ceil(n * RATE_MIN - 1e-9)), min(K_MAX, math.floor(n * RATE_MAX + 1e-9)) + 1)


def capacity_bits(n: int, eps: float, channel: str = "bsc") -> int:
    """floor(n C(eps)), at least 1: the bits an ideal code of length n carries (the bound's k)."""
    return max(1, math.floor(n * CAPACITY[channel](eps) + 1e-9))


def ldpc_k(n: int, eps: float, channel: str = "bsc", rate: float = 0.0) -> int:
    """k for a 5G LDPC code of length n: round(rate x n), kept inside the allowed range; with rate 0
    the default: the largest allowed k below n C(eps), or the smallest allowed one (rate 1/5) where
    capacity is below every 5G rate."""
    allowed = ldpc_k_range(n)
    if not allowed:
        raise ValueError(f"a 5G LDPC code needs at least {K_MIN + 1} coded bits, got {n}")
    want = round(rate * n) if rate else math.floor(n * CAPACITY[channel](eps) - 1e-9)
    return min(max(want, allowed[0]), allowed[-1])
