"""The one place defaults live. The CLI, the search spaces, Ray and MLflow all go through `Config`.

Where the paper and the authors' reference code disagree, the default is the paper's and the
code's behaviour is an option (each such field says so).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import reprlib
import sys
from dataclasses import dataclass, field, fields
from typing import NoReturn

from .capacity import K_MIN, RATE_MAX, RATE_MIN, capacity_bits, ldpc_k, ldpc_k_range
from .datasets import LIKELIHOODS, SPECS, default_bits, is_name

DATASETS = tuple(SPECS)   # the known ones (iabf/datasets.py); any other <name>.npz in data_dir is one too
METHODS = ("necst", "abf", "iabf", "separation")
PAPER_METHODS = METHODS[:3]   # the paper's, in its Table 1's order: what tables order arms by and contrast against
CHANNEL_CODES = ("ldpc", "capacity", "none")   # separation's channel code (iabf/separation.py)
# The channels by name, each said in one line (`--help`); a row of iabf.channels.CHANNELS each (its
# tensors), one entry of iabf.capacity.CAPACITY each (torch-free here, so studies validate without
# torch; a test keeps the three equal)
CHANNELS = {
    "bsc": "binary symmetric (eq. 17-18): every bit flipped with probability eps; the adversary flips 0 -> 1 "
           "and 1 -> 0",
    "bec": "binary erasure: every bit erased with probability eps; the adversary erases the bits whose erasure "
           "raises the loss",
    "z": "Z-channel: every 1 becomes 0 with probability eps, a 0 stays 0; the adversary flips only 1 -> 0",
}
FLIPS = ("budget", "topk")
TC_INPUTS = ("bits", "probs")
VIMCO_SIGNALS = ("loglik", "loss")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
PRECISIONS = ("fp32", "bf16", "tf32")   # iabf/precision.py

# Model family and code length per known dataset, from its spec (the architectures are in models.ARCH)
ARCH_KIND = {k: spec.arch for k, spec in SPECS.items()}
DEFAULT_BITS = {k: spec.bits for k, spec in SPECS.items()}


INT_MAX = 2**31 - 1   # every integer setting fits in 32 bits (seeds included): larger is a typo or a fuzz

class _Short(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 60, 60, 40
        self.maxlist = self.maxdict = self.maxtuple = self.maxset = 6

    def repr_int(self, x, level):   # repr() of an int beyond 4300 digits raises; its size is what matters
        return super().repr_int(x, level) if x.bit_length() < 4000 else f"<an integer of {x.bit_length()} bits>"


def short(value) -> str:
    """repr() cut to a bounded size and time: a value from a file may be deep, huge or self-referential."""
    return _Short().repr(value)


_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """text with every character that breaks a line (str.splitlines' set) escaped, as in repr()."""
    return str(text).translate(_BREAKS)


def warnings_in_one_line() -> None:
    """A command's warnings print as `warning: message`, one line, as its errors do (no source line)."""
    import warnings
    warnings.formatwarning = lambda message, *_, **__: f"warning: {one_line(message)}\n"


def exit_with(code: int) -> NoReturn:
    """A command's exit. Its libraries' objects (torch's, Ray's, MLflow's, pandas') are frozen out of the
    garbage collector first, so the interpreter's last collections skip them: 0.6 to 1.2 s of CPU a
    process (a study's driver, a report), measured. atexit handlers, flushes and finalizers run as ever."""
    gc.freeze()
    sys.exit(code)


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key and what is allowed.
    `key` is the Config field, so a command line can name its option."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Allowed:
    """A field's allowed values, declared beside it: Config.validate checks them, `--help` prints
    them and search_spaces/schema.json holds them (so an editor flags `eps: 0.7` as the validator does)."""
    choices: tuple | dict = ()      # a setting's names (a dict: name -> what it is, which --help says)
    lo: float | None = None         # a number in [lo, hi], or (lo, hi] when `above`; no hi: unbounded
    hi: float | None = None
    above: bool = False
    also: tuple = ()                # values outside the range that mean something (-1: "as eps")
    note: str = ""                  # what they mean, as the message says it
    noun: str = ""                  # what a value in range is called ("a probability")
    source: str = ""                # where the range comes from, said after it
    study_below: float | None = None   # a study's values stay below it (a channel at eps 0.5 carries nothing;
                                       # iabf.train still trains there): the study validator and schema read it

    def admits(self, v) -> bool:
        if self.choices:
            return v in self.choices
        low = self.lo is None or (v > self.lo if self.above else v >= self.lo)
        return v in self.also or low and (self.hi is None or v <= self.hi)

    def text(self, kind: str) -> str:
        """The allowed values as an error message and `--help` say them."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        noun = self.noun or ("an integer" if kind == "int" else "a number")
        span = f"{noun} in [{self.lo:.3g}, {self.hi:.3g}]" if self.hi is not None else \
            f"{noun} {'>' if self.above else '>='} {self.lo:.3g}"
        if kind == "int" and self.also and (self.lo, self.hi) == (1, None):
            span = "a positive integer"   # beside 0's meaning: "0 (all) or a positive integer"
        span += f" ({self.source})" if self.source else ""
        also = " or ".join(f"{v:g}" for v in self.also)
        return f"{also}{' ' + self.note if self.note else ''} or {span}" if also else span


def _f(default, help, allowed: Allowed | None = None):  # a field with its documentation (`--help`) and allowed values
    return field(default=default, metadata={"help": help, "allowed": allowed})


def _one_of(names: tuple) -> Allowed:
    return Allowed(choices=names)


ANY = Allowed(lo=0)          # a weight or a count where 0 is a value like any other
AT_LEAST_1 = Allowed(lo=1)
WHOLE = Allowed(lo=1, also=(0,), note="(the whole validation split)")


@dataclass
class Config:
    # --- what is trained ---
    dataset: str = _f("mnist", f"dataset: one of {', '.join(DATASETS)}, or the name of any <name>.npz in data_dir "
                               "(its spec inferred from its arrays: python -m iabf.data info NAME)")
    likelihood: str = _f("auto", "the decoder's likelihood: auto (the dataset's: Bernoulli for Binary MNIST and for a "
                                 "dataset of one's own whose pixels are all 0 or 255, else squared error), bernoulli "
                                 "(BCE against the intensities) or squared (squared error on [0, 1])", _one_of(LIKELIHOODS))
    n_valid: int = _f(0, "validation images carved out of x_train; 0 = the dataset's (Binary MNIST/MNIST/CIFAR10 "
                         "10,000, Omniglot 500, digits 300; a tenth of x_train for a dataset of one's own)",
                     Allowed(lo=1, also=(0,), note="(the dataset's)"))
    method: str = _f("iabf", "necst (eq. 16), abf (adversarial bit flip, eq. 30), iabf (abf + infomax, eq. 29), "
                             "separation (a noiseless learned source code of k bits, then a channel code to M bits)",
                     _one_of(METHODS))
    n_bits: int = _f(0, "code length m; 0 = the paper's for the dataset (BinaryMNIST/MNIST 100, Omniglot 200, CIFAR10 500; "
                        "100 for a dataset of one's own)", Allowed(lo=1, also=(0,), note="(the paper's)"))
    channel: str = _f("bsc", "the channel, one of", _one_of(CHANNELS))
    eps: float = _f(0.1, "training channel noise: the probability of the channel's flip, erasure or drop (--channel)",
                    Allowed(lo=0, hi=0.5, noun="a probability", study_below=0.5))
    test_eps: float = _f(-1.0, "channel noise at validation and test; -1 = same as eps",
                          Allowed(lo=0, hi=0.5, also=(-1,), noun="a probability", study_below=0.5))
    lam: float = _f(0.01, "lambda, weight of the infomax term L_info (eq. 29); used by iabf only; paper: {0.1, 0.01, 0.001}", ANY)
    K: int = _f(5, "VIMCO samples per image (eq. 31); the paper uses 5", AT_LEAST_1)
    # --- adversarial bit flip (eq. 23-26, 30) ---
    flip: str = _f("budget", "budget: the paper's eps_i proportional to |dL/dy_i| with sum M*eps (default); "
                             "topk: the reference code's hard Gumbel-top-k flips", _one_of(FLIPS))
    flip_budget: float = _f(-1.0, "adversary's noise per bit (budget M*flip_budget); -1 = eps, as in the paper",
                             Allowed(lo=0, hi=0.5, also=(-1,), note="(eps)", noun="a value"))
    flip_k: int = _f(10, "topk only: bits drawn for flipping per image (reference code: 10); 0 = round(M x eps), "
                         "the channel's expected flips in the trial's own cell",
                     Allowed(lo=1, also=(0,), note="(round(M x eps))"))
    # --- separation: source code, then channel code (iabf/separation.py) ---
    channel_code: str = _f("ldpc", "separation only: ldpc (a 5G NR LDPC code of rate k/M, Sionna's encoder with rate "
                                   "matching, belief-propagation decoding), capacity (the optimistic bound, not a "
                                   "scheme: k = floor(M C(eps)) bits delivered error-free) or none (uncoded: k = M bits "
                                   "straight through the channel)", _one_of(CHANNEL_CODES))
    code_rate: float = _f(0.0, f"separation with ldpc: the code's rate k/M in [{RATE_MIN:g}, {RATE_MAX:.3g}] (k = "
                               "round(rate x M), kept to the k 5G allows); 0 = the largest k below M C(eps), or rate "
                               "1/5 where C(eps) < 1/5",
                       Allowed(lo=RATE_MIN, hi=RATE_MAX, also=(0,), note="(the default k)", noun="a rate",
                               source="3GPP TS 38.212: 1/5 to 948/1024"))
    bp_iters: int = _f(20, "separation with ldpc: belief-propagation iterations (Sionna's default)", AT_LEAST_1)
    # --- infomax (eq. 10-14, 27) ---
    tc_input: str = _f("bits", "what the TC discriminator sees: bits sampled as in Algorithm 1 (default, "
                               "straight-through gradient to the encoder) or probs (the reference code)", _one_of(TC_INPUTS))
    # --- reference-code extras, off by default (not in eq. 29) ---
    clean_weight: float = _f(0.0, "weight of the decoder's reconstruction from the encoder's clean probabilities "
                                  "(reference code `denoising_decoder_v2`, 0.1 there); 0 = the paper's objective", ANY)
    vimco_signal: str = _f("loglik", "VIMCO's per-sample signal (eq. 31): loglik, the paper's log-likelihood, whose "
                                     "weights favour the best samples; loss, NECST's and the IABF authors' code, which "
                                     "puts the positive loss in the log-sum-exp, so its weights favour the worst",
                         _one_of(VIMCO_SIGNALS))
    # --- optimisation (reference main.py defaults) ---
    epochs: int = _f(200, "training epochs; the best epoch by validation distortion is kept", AT_LEAST_1)
    batch_size: int = _f(100, "training batch size", AT_LEAST_1)
    lr: float = _f(1e-3, "Adam learning rate for encoder, decoder and discriminator",
                   Allowed(lo=0, above=True))
    weight_decay: float = _f(1e-4, "L2 penalty on encoder weights (reference `reg_param`), as 0.5*wd*||W||^2", ANY)
    max_train_examples: int = _f(0, "use only the first N training examples; 0 = all",
                                 Allowed(lo=1, also=(0,), note="(all)"))
    examples_seen: int = _f(0, "training examples to see in all, in place of epochs: epochs = round(examples / "
                          "max_train_examples), at least 1, so that runs on more or fewer images train for the same "
                          "compute; needs max_train_examples; 0 = use epochs", Allowed(lo=1, also=(0,), note="(epochs)"))
    # --- evaluation ---
    eval_batch_size: int = _f(1000, "batch size for validation and test (no effect on the numbers)", AT_LEAST_1)
    val_batch: int = _f(0, "validation images per epoch, which choose the best epoch: 0 = the whole validation split; "
                           "N = one batch of N drawn afresh each epoch (NECST's and the IABF authors' code: 100)", WHOLE)
    val_subset: int = _f(0, "validate on a fixed subset: the first N images of the validation split (a random draw "
                            "of the training set, CIFAR-10's last batch), the same every epoch; 0 = all of it. "
                            "A reduced budget's choice; the test split is always whole", WHOLE)
    # --- run ---
    seed: int = _f(0, "seed for initialisation, batches and channel noise", ANY)
    stack: int = _f(1, "train seeds seed, seed+1, ..., seed+stack-1 together as one stacked (vmapped) model, "
                       "reported as one result per seed; 1 = one seed per run. MLP datasets only",
                     AT_LEAST_1)
    data_dir: str = _f("data", "folder holding <dataset>.npz (see `python -m iabf.data prepare`)")
    download: bool = _f(False, "download and prepare a missing dataset through torchvision")
    device: str = _f("auto", "cpu, cuda, or auto (cuda when available)", _one_of(DEVICES))
    precision: str = _f("fp32", "fp32 (float32, the default), bf16 (autocast to bfloat16 on CPU or CUDA; float32 weights, "
                                "optimizer state and the terms iabf/precision.py lists) or tf32 (CUDA: float32 with TF32 "
                                "matrix multiplies)", _one_of(PRECISIONS))
    compile: str = _f("off", "torch.compile the networks for training: off, default, reduce-overhead (CUDA graphs) "
                             "or max-autotune; costs a compilation in the first epoch (benchmarks/compile.py)",
                  _one_of(COMPILE_MODES))

    def __post_init__(self):
        self.validate()
        if self.examples_seen:   # the budget in examples decides the epochs (and the record says both)
            self.epochs = max(1, math.floor(self.examples_seen / self.max_train_examples + 0.5))

    # Derived values live here, not as more fields, so there is one source of truth.
    @property
    def bits(self) -> int:
        return self.n_bits or default_bits(self.dataset)

    @property
    def eval_eps(self) -> float:
        return self.eps if self.test_eps < 0 else self.test_eps

    @property
    def resolved_flip_k(self) -> int:
        """flip_k, with 0 meaning round(M x eps) (at least 1): the flips the channel itself makes."""
        return self.flip_k or max(1, math.floor(self.bits * self.eps + 0.5))

    @property
    def latent_bits(self) -> int:
        """The bits the encoder emits: M, or for separation the source code's k (the channel code
        takes them to M): round(code_rate x M) for ldpc, floor(M C(eps)) for the bound, M uncoded."""
        if self.method != "separation" or self.channel_code == "none":
            return self.bits
        if self.channel_code == "capacity":
            return capacity_bits(self.bits, self.eval_eps, self.channel)
        return ldpc_k(self.bits, self.eval_eps, self.channel, self.code_rate)

    @property
    def adv_eps(self) -> float:
        return self.eps if self.flip_budget < 0 else self.flip_budget

    def validate(self) -> None:
        def need(ok: bool, key: str, allowed: str):
            if not ok:
                raise ConfigError(f"{key}={short(getattr(self, key))} is not allowed: {allowed}", key)

        for f in fields(self):  # its type first, so its range can compare
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "str": str, "bool": bool}[f.type]
            if isinstance(v, bool) and f.type != "bool" or not isinstance(v, want):
                raise ConfigError(f"{f.name}={short(v)} is not allowed: expected {f.type}", f.name)
            # NaN passes every range check below (all comparisons are False), so finiteness comes first
            if f.type == "float":
                need(math.isfinite(v), f.name, "a finite number")
            if f.type == "int":
                need(abs(v) <= INT_MAX, f.name, f"an integer of at most {INT_MAX}")
            allowed = f.metadata["allowed"]
            if allowed is not None:
                need(allowed.admits(v), f.name, allowed.text(f.type))
        # the rules no one field's range says: a name, a pair of fields, a path
        need(self.dataset in DATASETS or is_name(self.dataset), "dataset",
             f"one of {', '.join(DATASETS)}, or the name of a <name>.npz in data_dir (letters, digits, _ . -)")
        need(self.stack == 1 or self.compile == "off", "stack", "1 with compile (stacked seeds run under vmap, uncompiled)")
        # vmap cannot batch BatchNorm's in-place running statistics (the conv models of cifar10)
        need(self.stack == 1 or ARCH_KIND.get(self.dataset, "mlp") == "mlp", "stack",
             f"1 for {self.dataset} (stacked seeds need an MLP dataset: {', '.join(d for d, k in ARCH_KIND.items() if k == 'mlp')})")
        need(self.method != "separation" or self.channel_code != "ldpc" or bool(ldpc_k_range(self.bits)), "n_bits",
             f"at least {K_MIN + 1} for separation with a 5G LDPC code (k >= {K_MIN}, rate <= 948/1024)")
        need(not self.examples_seen or self.max_train_examples > 0, "examples_seen",
             "0 unless max_train_examples is set (the epochs are examples_seen / max_train_examples)")
        need("\0" not in self.data_dir, "data_dir", "a path without NUL characters")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build from a mapping; an unknown key is an error, never silently dropped. A `preset` key
        (PRESETS) gives the values its name stands for; the mapping's own values override them."""
        d = with_preset(d)
        names = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - names))
        if unknown:
            raise ConfigError(f"unknown config key(s) {short(unknown)}; known keys: {', '.join(sorted(names))}")
        def as_float(k, v):   # an int where a float is expected; one beyond float's range is no number
            try:
                return float(v)
            except OverflowError:
                raise ConfigError(f"{k}={short(v)} is not allowed: a finite number", k) from None

        d = {k: as_float(k, v) if FIELD_TYPES[k] == "float" and isinstance(v, int) and not isinstance(v, bool) else v
             for k, v in d.items()}
        return cls(**d)


FIELD_TYPES = {f.name: f.type for f in fields(Config)}
# what a field checked on its own (a study file's value, the schema's property test) needs beside it: the rules
# between fields are checked on the whole config
ALONE = {"examples_seen": {"max_train_examples": 1}}

# Named versions of the method: where the paper and its authors' code differ, `paper` is the paper
# (the defaults), `reference` the authors' code (reference spec: "Objectives", "Optimisation").
PRESETS = {
    "paper": {},
    "reference": {
        "flip": "topk",            # perturb_latent_code: Gumbel top-k from softmax(g^2), eps_i = 1 (vs eq. 30's budget)
        "flip_k": 10,              # flip_samples = 10 (10% of 100 bits)
        "tc_input": "probs",       # the TC discriminator sees Bernoulli probabilities (vs Algorithm 1's bits)
        "clean_weight": 0.1,       # denoising_decoder_v2 with denw = 0.1: a term eq. 29 does not have
        "vimco_signal": "loss",    # the positive loss in VIMCO's log-sum-exp (vs eq. 31's log-likelihood)
        "val_batch": 100,          # the best epoch chosen on one validation batch of 100 (vs the whole split)
    },
}


def with_preset(d: dict) -> dict:
    """d with its `preset` replaced by the values it stands for (d's own values win)."""
    if "preset" not in d:
        return d
    d = dict(d)
    name = d.pop("preset")
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"preset={short(name)} is not allowed: one of {', '.join(PRESETS)}", "preset")
    return {**PRESETS[name], **d}


def seed_configs(cfg: Config) -> list[Config]:
    """The configuration of each seed a run trains: cfg.seed, cfg.seed + 1, ... (cfg.stack of them),
    each as its own separate run would have it."""
    return [dataclasses.replace(cfg, seed=cfg.seed + i) for i in range(cfg.stack)]


# --- command line: one option per field ----------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def config_parser(prog: str, description: str) -> Parser:
    """An argparse parser with one option per Config field, documented by the field itself, and
    --preset. Options left out are absent from the namespace (not filled with defaults), so that a
    preset's values apply unless an option overrides them."""
    p = Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: the paper's equations (the defaults); reference: every choice of the authors' code "
                        "(" + ", ".join(f"{k}={v}" for k, v in PRESETS["reference"].items()) + "); "
                        "options given with it override it (default: paper)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        allowed = f.metadata["allowed"]
        # a setting's names as argparse shows choices (Config checks them)
        metavar = "{" + ",".join(allowed.choices) + "}" if allowed and allowed.choices else None
        helptext = f"{help_text(f)} (default: {f.default})"
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=helptext)
        else:
            p.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], help=helptext, metavar=metavar)
    return p


def help_text(f: dataclasses.Field) -> str:
    """A field's documentation with its allowed values (`--help`, schema.json): each named choice
    said in its line, or the range."""
    allowed, text = f.metadata["allowed"], f.metadata["help"]
    if allowed and isinstance(allowed.choices, dict):
        return text + " " + "; ".join(f"{k}: {doc}" for k, doc in allowed.choices.items())
    return f"{text} (allowed: {allowed.text(f.type)})" if allowed and not allowed.choices else text


def config_from_args(args: argparse.Namespace) -> Config:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    return Config.from_dict({"preset": args.preset, **given})


def run_name(cfg: Config) -> str:
    """What the run is, e.g. mnist-iabf-eps0.1-lam0.01-K5-s0; a channel other than the paper's BSC
    is named too (mnist-iabf-z-eps0.1-...), a precision other than fp32 (...-s0-bf16) and a spec
    override (mnist-bernoulli-nv500-iabf-...), so runs that differ in them never share a folder."""
    lam = f"-lam{cfg.lam:g}" if cfg.method == "iabf" else ""
    code = f"-{cfg.channel_code}-k{cfg.latent_bits}" if cfg.method == "separation" else ""
    channel = "" if cfg.channel == "bsc" else f"-{cfg.channel}"
    arithmetic = "" if cfg.precision == "fp32" else f"-{cfg.precision}"
    spec = ("" if cfg.likelihood == "auto" else f"-{cfg.likelihood}") + (f"-nv{cfg.n_valid}" if cfg.n_valid else "")
    return f"{cfg.dataset}{spec}-{cfg.method}{code}{channel}-eps{cfg.eps:g}{lam}-K{cfg.K}-s{cfg.seed}{arithmetic}"
