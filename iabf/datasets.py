"""What the code knows about a dataset: one spec each, in one table (no torch here: Config and the
analysis read it). A name that is not in the table is any `<name>.npz` in the data folder: its spec
is inferred from its arrays (`infer`), and `python -m iabf.data info NAME` shows it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DatasetSpec:
    display: str                 # the name tables and figures print
    shape: tuple[int, int, int]  # (C, H, W), as training sees an image
    binary: bool                 # Bernoulli likelihood (BCE); else squared error on [0, 1]
    arch: str                    # the model family: "mlp" (one channel) or "conv" (3 x 32 x 32)
    bits: int                    # the code length n_bits: 0 means (the paper's Table 1 for its datasets)
    n_valid: int                 # validation images carved out of x_train
    val_last: bool = False       # the validation split is the last n_valid images, not a seeded draw


SPECS = {
    # digits: ours, scikit-learn's 8x8 digits (64 pixels, 17 grey levels), no download
    "digits": DatasetSpec("Digits (8x8)", (1, 8, 8), False, "mlp", 16, 300),
    "binary_mnist": DatasetSpec("Binary MNIST", (1, 28, 28), True, "mlp", 100, 10_000),
    "mnist": DatasetSpec("MNIST", (1, 28, 28), False, "mlp", 100, 10_000),
    "omniglot": DatasetSpec("Omniglot", (1, 28, 28), False, "mlp", 200, 500),
    # the reference keeps data_batch_5 (the last 10,000 training images) for validation
    "cifar10": DatasetSpec("CIFAR10", (3, 32, 32), False, "conv", 500, 10_000, val_last=True),
}
# A dataset of one's own: `n_bits: 0` means this many bits, and this share of x_train validates
OWN_BITS = 100
OWN_VALID_FRACTION = 0.1
LIKELIHOODS = ("auto", "bernoulli", "squared")   # auto: the spec's (Config.likelihood)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")   # a file stem: <name>.npz in the data folder


def is_name(name: str) -> bool:
    return isinstance(name, str) and bool(NAME.fullmatch(name)) and not name.endswith(".npz")


def default_bits(name: str) -> int:
    return SPECS[name].bits if name in SPECS else OWN_BITS


def display(name: str) -> str:
    return SPECS[name].display if name in SPECS else name


def infer(name: str, x_shape: tuple[int, ...], binary: bool) -> DatasetSpec:
    """The spec of a dataset not in SPECS, from its x_train: (N, H, W) is one channel (the MLP),
    (N, 32, 32, 3) three (the conv model); binary when every pixel is 0 or 255. ValueError (one line)
    for images no model here takes."""
    n = x_shape[0] if x_shape else 0
    if len(x_shape) == 3:
        shape, arch = (1, *x_shape[1:]), "mlp"
    elif len(x_shape) == 4 and tuple(x_shape[1:]) == (32, 32, 3):
        shape, arch = (3, 32, 32), "conv"
    else:
        raise ValueError(f"x_train has shape {tuple(x_shape)}: a dataset is (N, H, W) grey images (the MLP) or "
                         f"(N, 32, 32, 3) colour images (the conv model)")
    return DatasetSpec(name, shape, binary, arch, OWN_BITS, max(1, int(n * OWN_VALID_FRACTION)))


def override(spec: DatasetSpec, n_valid: int = 0, likelihood: str = "auto") -> DatasetSpec:
    """spec as a run asks for it (Config.n_valid, Config.likelihood; by_dataset in a study file):
    n_valid images validate (0: the spec's), and the likelihood is Bernoulli (BCE against the pixel
    intensities, soft targets for grey images) or squared error (auto: the spec's)."""
    return replace(spec, n_valid=n_valid or spec.n_valid,
                   binary=spec.binary if likelihood == "auto" else likelihood == "bernoulli")
