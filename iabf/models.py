"""Encoders, decoders and the total-correlation discriminator (reference spec, "Architectures").

The encoder maps an image to M logits of independent Bernoulli bits (mean field, eq. 6); the
decoder maps received symbols (K, B, M) to pixel logits (K, B, *image): Bernoulli logits for
binary data, pre-sigmoid means for the rest. The architecture for a dataset is a plain dict.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# tf.nn.leaky_relu's default slope, which the reference code used
SLOPE = 0.2

ARCH = {
    "digits": {"enc": (256,), "dec": (256, 256)},  # ours: 8x8 needs less width
    "binary_mnist": {"enc": (500,), "dec": (500, 500)},
    "mnist": {"enc": (500,), "dec": (500, 500)},
    "omniglot": {"enc": (500,), "dec": (500, 500)},
    "cifar10": {"enc": (64, 32, 16), "dec": (16, 32, 64)},
}


def mlp(sizes: list[int], bias: bool, last_bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=last_bias if last else bias))
        if not last:
            layers.append(nn.LeakyReLU(SLOPE))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Wraps a body that maps (N, M) -> (N, *image); accepts any leading dims, e.g. (K, B, M)."""

    def __init__(self, body: nn.Module, image_shape: tuple[int, ...]):
        super().__init__()
        self.body, self.image_shape = body, tuple(image_shape)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        lead = y.shape[:-1]
        out = self.body(y.reshape(-1, y.shape[-1]))
        return out.reshape(*lead, *self.image_shape)


def conv_encoder(channels, bits: int) -> nn.Sequential:
    """CIFAR10: 3 x [3x3 conv, BN, ReLU, 2x2 max-pool] (32->16->8->4), then linear to the bits."""
    layers, c_in = [], 3
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 4 * 4, bits, bias=False))


class UpConv2d(nn.Conv2d):
    """A 2x nearest upsample followed by this 3x3 convolution (padding 1), computed at the low
    resolution: each of the four output phases (row and column parity) is a 3x3 convolution of
    the input whose kernel sums the original taps that land on the same input pixel, and
    pixel_shuffle interleaves the phases. Same parameters, same function up to float rounding;
    no upsampled intermediate. On a CPU it makes CIFAR-10's last layer (64 -> 3 channels at
    32x32, where few output channels keep the convolution memory-bound) about 4x faster."""

    # PHASE[a, r, u]: for output rows of parity a, the weight of original tap u (row offset u - 1
    # at high resolution) on input row offset r - 1 at low resolution
    PHASE = torch.tensor([[[1., 0., 0.], [0., 1., 1.], [0., 0., 0.]],
                          [[0., 0., 0.], [1., 1., 0.], [0., 0., 1.]]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        P = self.PHASE.to(self.weight)
        o, i = self.weight.shape[:2]
        w = torch.einsum("aru,bsv,oiuv->oabirs", P, P, self.weight).reshape(4 * o, i, 3, 3)
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return F.pixel_shuffle(F.conv2d(x, w, bias, padding=1), 2)


def conv_decoder(channels, bits: int) -> nn.Sequential:
    """CIFAR10: linear to 4x4x16, 3 x [3x3 conv, BN, ReLU, 2x upsample], 3x3 conv to RGB, BN.
    The last upsample and conv run as one UpConv2d (the upsample's slot is an Identity, so the
    parameter names are those of the plain layers)."""
    layers, c_in = [nn.Linear(bits, channels[0] * 16, bias=False), nn.Unflatten(1, (channels[0], 4, 4))], channels[0]
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Upsample(scale_factor=2)]
        c_in = c
    layers[-1] = nn.Identity()
    return nn.Sequential(*layers, UpConv2d(c_in, 3, 3, padding=1), nn.BatchNorm2d(3))


def discriminator(bits: int, hidden: int = 500) -> nn.Sequential:
    """C_psi of eq. 13: codes -> 2 logits (0: a joint sample y ~ p(y), 1: a dimension-wise
    permuted one ~ prod_d p(y_d)). One hidden layer of the encoder's width, as in the reference."""
    return mlp([bits, hidden, 2], bias=True, last_bias=True)


def build(dataset: str, image_shape: tuple[int, ...], bits: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(encoder, decoder, discriminator) for a dataset: its own widths, or for a dataset of one's own
    those of its family (MNIST's MLP for grey images, CIFAR-10's conv model for 3 x 32 x 32)."""
    kind = "conv" if tuple(image_shape) == (3, 32, 32) else "mlp"
    arch = ARCH.get(dataset) or ARCH["cifar10" if kind == "conv" else "mnist"]
    if kind == "conv":
        enc = conv_encoder(arch["enc"], bits)
        dec = Decoder(conv_decoder(arch["dec"], bits), image_shape)
        # channels-last kernels make oneDNN run every convolution in NHWC: about 2x faster on a
        # CPU for these narrow layers (benchmarks/datasets.py); the weights' values are unchanged
        enc, dec = enc.to(memory_format=torch.channels_last), dec.to(memory_format=torch.channels_last)
    else:
        d = math.prod(image_shape)
        # the last encoder layer and every decoder layer have no bias, as in the reference code
        enc = nn.Sequential(nn.Flatten(), mlp([d, *arch["enc"], bits], bias=True, last_bias=False))
        dec = Decoder(mlp([bits, *arch["dec"], d], bias=False, last_bias=False), image_shape)
    return enc, dec, discriminator(bits, arch["enc"][0] if kind == "mlp" else 500)


def weight_penalty(module: nn.Module) -> torch.Tensor:
    """0.5 * sum ||W||^2 over weight matrices and kernels (tf.nn.l2_loss; biases and BN excluded)."""
    return sum(0.5 * p.pow(2).sum() for n, p in module.named_parameters() if p.dim() > 1)
