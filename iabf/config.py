"""The one place defaults live. The CLI, the search spaces, Ray and MLflow all go through `Config`.

Where the paper and the authors' reference code disagree, the default is the paper's and the
code's behaviour is an option (each such field says so).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

DATASETS = ("digits", "binary_mnist", "mnist", "omniglot", "cifar10")
METHODS = ("necst", "abf", "iabf")
CHANNELS = ("bsc", "bec")
FLIPS = ("budget", "topk")
TC_INPUTS = ("bits", "probs")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")

# Model family per dataset (the architectures themselves are in models.ARCH)
ARCH_KIND = {"digits": "mlp", "binary_mnist": "mlp", "mnist": "mlp", "omniglot": "mlp", "cifar10": "conv"}
# Code length per dataset: the paper's Table 1 (digits is ours: 64 pixels, 17 grey levels).
DEFAULT_BITS = {"digits": 16, "binary_mnist": 100, "mnist": 100, "omniglot": 200, "cifar10": 500}


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key and what is allowed."""


def _f(default, help):  # a field with its documentation, shown by `--help`
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # --- what is trained ---
    dataset: str = _f("mnist", f"dataset, one of {DATASETS}")
    method: str = _f("iabf", "necst (eq. 16), abf (adversarial bit flip, eq. 30), iabf (abf + infomax, eq. 29)")
    n_bits: int = _f(0, "code length m; 0 = the paper's for the dataset (BinaryMNIST/MNIST 100, Omniglot 200, CIFAR10 500)")
    channel: str = _f("bsc", "bsc (binary symmetric, eq. 18) or bec (binary erasure)")
    eps: float = _f(0.1, "training channel noise: flip (BSC) or erasure (BEC) probability, in [0, 0.5]")
    test_eps: float = _f(-1.0, "channel noise at validation and test; -1 = same as eps")
    lam: float = _f(0.01, "lambda, weight of the infomax term L_info (eq. 29); used by iabf only; paper: {0.1, 0.01, 0.001}")
    K: int = _f(5, "VIMCO samples per image (eq. 31); the paper uses 5")
    # --- adversarial bit flip (eq. 23-26, 30) ---
    flip: str = _f("budget", "budget: the paper's eps_i proportional to |dL/dy_i| with sum M*eps (default); "
                             "topk: the reference code's hard Gumbel-top-k flips")
    flip_budget: float = _f(-1.0, "adversary's noise per bit (budget M*flip_budget); -1 = eps, as in the paper")
    flip_k: int = _f(10, "topk only: bits drawn for flipping per image (reference code: 10)")
    # --- infomax (eq. 10-14, 27) ---
    tc_input: str = _f("bits", "what the TC discriminator sees: bits sampled as in Algorithm 1 (default, "
                               "straight-through gradient to the encoder) or probs (the reference code)")
    # --- reference-code extras, off by default (not in eq. 29) ---
    clean_weight: float = _f(0.0, "weight of the decoder's reconstruction from the encoder's clean probabilities "
                                  "(reference code `denoising_decoder_v2`, 0.1 there); 0 = the paper's objective")
    # --- optimisation (reference main.py defaults) ---
    epochs: int = _f(200, "training epochs; the best epoch by validation distortion is kept")
    batch_size: int = _f(100, "training batch size")
    lr: float = _f(1e-3, "Adam learning rate for encoder, decoder and discriminator")
    weight_decay: float = _f(1e-4, "L2 penalty on encoder weights (reference `reg_param`), as 0.5*wd*||W||^2")
    max_train_examples: int = _f(0, "use only the first N training examples; 0 = all")
    # --- evaluation ---
    eval_batch_size: int = _f(1000, "batch size for validation and test (no effect on the numbers)")
    # --- run ---
    seed: int = _f(0, "seed for initialisation, batches and channel noise")
    stack: int = _f(1, "train seeds seed, seed+1, ..., seed+stack-1 together as one stacked (vmapped) model, "
                       "reported as one result per seed; 1 = one seed per run. MLP datasets only")
    data_dir: str = _f("data", "folder holding <dataset>.npz (see `python -m iabf.data prepare`)")
    download: bool = _f(False, "download and prepare a missing dataset through torchvision")
    device: str = _f("auto", "cpu, cuda, or auto (cuda when available)")
    compile: str = _f("off", "torch.compile the networks for training: off, default, reduce-overhead (CUDA graphs) "
                             "or max-autotune; costs a compilation in the first epoch (benchmarks/compile.py)")

    def __post_init__(self):
        self.validate()

    # Derived values live here, not as more fields, so there is one source of truth.
    @property
    def bits(self) -> int:
        return self.n_bits or DEFAULT_BITS[self.dataset]

    @property
    def eval_eps(self) -> float:
        return self.eps if self.test_eps < 0 else self.test_eps

    @property
    def adv_eps(self) -> float:
        return self.eps if self.flip_budget < 0 else self.flip_budget

    def validate(self) -> None:
        def need(ok: bool, key: str, allowed: str):
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not allowed: {allowed}")

        for f in fields(self):  # types first, so the range checks below can compare
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[f.type]
            if isinstance(v, bool) and f.type != "bool" or not isinstance(v, want):
                raise ConfigError(f"{f.name}={v!r} is not allowed: expected {f.type}")
        need(self.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
        need(self.method in METHODS, "method", f"one of {', '.join(METHODS)}")
        need(self.channel in CHANNELS, "channel", f"one of {', '.join(CHANNELS)}")
        need(self.flip in FLIPS, "flip", f"one of {', '.join(FLIPS)}")
        need(self.tc_input in TC_INPUTS, "tc_input", f"one of {', '.join(TC_INPUTS)}")
        need(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        need(0.0 <= self.eps <= 0.5, "eps", "a probability in [0, 0.5]")
        need(self.test_eps == -1.0 or 0.0 <= self.test_eps <= 0.5, "test_eps", "-1 or a probability in [0, 0.5]")
        need(self.flip_budget == -1.0 or 0.0 <= self.flip_budget <= 0.5, "flip_budget", "-1 or a value in [0, 0.5]")
        need(self.lam >= 0, "lam", "a number >= 0")
        need(self.K >= 1, "K", "an integer >= 1")
        need(self.n_bits >= 0, "n_bits", "0 (the paper's) or a positive integer")
        need(self.flip_k >= 1, "flip_k", "an integer >= 1")
        need(self.clean_weight >= 0, "clean_weight", "a number >= 0")
        need(self.epochs >= 1, "epochs", "an integer >= 1")
        need(self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")
        need(self.lr > 0, "lr", "a number > 0")
        need(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(self.compile in COMPILE_MODES, "compile", f"one of {', '.join(COMPILE_MODES)}")
        need(self.stack >= 1, "stack", "an integer >= 1")
        need(self.stack == 1 or self.compile == "off", "stack", "1 with compile (stacked seeds run under vmap, uncompiled)")
        # vmap cannot batch BatchNorm's in-place running statistics (the conv models of cifar10)
        need(self.stack == 1 or ARCH_KIND.get(self.dataset) == "mlp", "stack",
             f"1 for {self.dataset} (stacked seeds need an MLP dataset: {', '.join(d for d, k in ARCH_KIND.items() if k == 'mlp')})")
        need(self.max_train_examples >= 0, "max_train_examples", "0 (all) or a positive integer")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build from a mapping; an unknown key is an error, never silently dropped."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(names))}")
        d = {k: float(v) if FIELD_TYPES[k] == "float" and isinstance(v, int) and not isinstance(v, bool) else v
             for k, v in d.items()}
        return cls(**d)


FIELD_TYPES = {f.name: f.type for f in fields(Config)}
