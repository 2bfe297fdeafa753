"""The arithmetic a run trains and evaluates in (`Config.precision`): fp32, bf16 or tf32.

- fp32: float32 everywhere (the default; today's numbers, bit for bit).
- bf16: torch.autocast to bfloat16 around every forward pass, on CPU and CUDA: matrix multiplies and
  convolutions run in bf16 (8 bits of mantissa, float32's range), while the weights, the gradients and
  Adam's state stay float32.
- tf32: CUDA only: float32 tensors, matrix multiplies and convolutions on TF32 tensor cores (10 bits
  of mantissa in the products, float32 accumulation).

Under bf16, what needs float32 is cast back to it where it is computed (a no-op in fp32), each for a
reason: the encoder's Bernoulli probabilities (train.py, stacked.py: a bf16 sigmoid rounds 1 - 1e-7 to
1, where log(1 - p) is -inf), the Bernoulli log-probabilities of the score function (channels.py),
the reconstruction log-likelihood and BCE (losses.log_likelihood: a sum over 784-3072 pixels, whose
bf16 rounding exceeds the differences VIMCO weighs), VIMCO's log-sum-exp and leave-one-out baseline
(eq. 31: differences of nearly equal log-likelihoods), the TC discriminator's logit difference (eq. 14)
and its cross-entropy, and the adversary's gradient with respect to the code (eq. 23: taken w.r.t.
float32 bits, through a float32 loss).
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from .config import ConfigError


def has_bf16_kernels(device: torch.device) -> bool:
    """Does this device run bf16 matrix kernels natively? CPUs: AVX512_BF16 or AMX (oneDNN); without
    them autocast emulates bf16 and runs slower than float32 (benchmarks/README.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def check(precision: str, device: torch.device, bf16_kernels: bool | None = None) -> None:
    """Refuse what the device cannot do; warn (one line) where bf16 would be slow. bf16_kernels: whether
    the device has them (None: has_bf16_kernels asks it)."""
    if precision == "tf32" and device.type != "cuda":
        raise ConfigError(f"precision='tf32' is not allowed on {device.type}: TF32 needs a CUDA device "
                          "(on a CPU use fp32 or bf16)", "precision")
    if precision == "bf16" and not (has_bf16_kernels(device) if bf16_kernels is None else bf16_kernels):
        warnings.warn(f"precision=bf16 on a {device.type} without bf16 kernels (no AVX512_BF16 or AMX): autocast "
                      "emulates bf16 there and trains several times slower than fp32", stacklevel=2)


@contextlib.contextmanager
def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: nothing for fp32; bf16 autocast; TF32 matmuls for tf32
    (restored afterwards, so a process's other work keeps its own setting)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32":
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    else:
        yield
