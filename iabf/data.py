"""Datasets: loading and preparing only. Arrays in, uint8 tensors on the training device out.

On disk every dataset is `<data_dir>/<name>.npz` with uint8 `x_train, y_train, x_test, y_test`
(images in their original value range 0..255), the layout of the project's offline copies.
`python -m iabf.data prepare NAME --data-dir DIR` downloads through torchvision and writes one.

Validation carve-outs follow the reference code's sizes (reference spec, "Data"), drawn once
with a fixed split seed so every run, method and machine sees the same split.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import exit_with
from .datasets import LIKELIHOODS, OWN_VALID_FRACTION, SPECS, DatasetSpec, infer, override

if TYPE_CHECKING:
    import torch   # annotations only: torch is imported where arrays go to the device (load)

SPLIT_SEED = 0        # fixed forever: changing it changes every reported number
BINARIZE_SEED = 0     # BinaryMNIST: one fixed Bernoulli draw of the MNIST intensities
# the known datasets' specs (iabf/datasets.py), by field
N_VALID = {k: spec.n_valid for k, spec in SPECS.items()}
IMAGE_SHAPE = {k: spec.shape for k, spec in SPECS.items()}   # (C, H, W) as training sees them
BINARY = {k for k, spec in SPECS.items() if spec.binary}     # Bernoulli likelihood; the rest squared error
DIGITS_N_TEST = 297   # sklearn's 1,797 digits -> 1,200 train / 300 valid / 297 test
N_TRAIN_DIGITS = 1_797 - DIGITS_N_TEST   # what its validation split is carved from


class DataError(RuntimeError):
    """A dataset that cannot be loaded; the message says how to get it."""


@dataclass
class Splits:
    train: torch.Tensor  # (N, C, H, W) uint8 on the training device; batches are drawn by index
    val: torch.Tensor
    test: torch.Tensor
    binary: bool         # Bernoulli likelihood (BCE) rather than squared error

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float in [0, 1]; done per batch so the device keeps 1 byte per pixel."""
    return x.float().div_(255.0)


def npz_path(name: str, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).expanduser() / f"{name}.npz"


# --- building arrays -----------------------------------------------------------------------

def _digits_file() -> Path | None:
    """scikit-learn's bundled digits.csv.gz (what load_digits reads), found without importing scikit-learn,
    which costs a second in every process that loads digits (each trial's); None where it is not there."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder) / "datasets" / "data" / "digits.csv.gz").is_file():
            return path
    return None


def _digits_images(path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits (0..16) and their labels: from scikit-learn's file at `path`, else through load_digits."""
    if path is not None:
        raw = np.loadtxt(path, delimiter=",")   # as load_digits: 64 pixels, then the label, per row
        return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1]
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download), 0..16 scaled to 0..255."""
    images, target = _digits_images(_digits_file())
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    y = target.astype(np.uint8)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    test, train = perm[:DIGITS_N_TEST], perm[DIGITS_N_TEST:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def binarize(mnist: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Statically binarized MNIST: pixel ~ Bernoulli(intensity/255), drawn once with a fixed seed
    (how Larochelle's file was made); stored as 0/255 so every dataset shares one scaling."""
    rng = np.random.default_rng(BINARIZE_SEED)
    out = dict(mnist)
    for k in ("x_train", "x_test"):
        out[k] = ((rng.random(mnist[k].shape) < mnist[k] / 255.0) * 255).astype(np.uint8)
    return out


def _download(name: str, data_dir: Path) -> dict[str, np.ndarray]:
    import torchvision.datasets as tvd

    raw = data_dir / "raw"
    if name in ("mnist", "binary_mnist"):
        tr, te = (tvd.MNIST(raw, train=t, download=True) for t in (True, False))
        arrays = {"x_train": tr.data.numpy(), "y_train": tr.targets.numpy().astype(np.uint8),
                  "x_test": te.data.numpy(), "y_test": te.targets.numpy().astype(np.uint8)}
        return binarize(arrays) if name == "binary_mnist" else arrays
    if name == "cifar10":
        tr, te = (tvd.CIFAR10(raw, train=t, download=True) for t in (True, False))
        return {"x_train": tr.data, "y_train": np.asarray(tr.targets, np.uint8),
                "x_test": te.data, "y_test": np.asarray(te.targets, np.uint8)}
    if name == "omniglot":
        from PIL import Image

        def part(background: bool):  # 105x105 strokes -> 28x28 ink by area averaging
            ds = tvd.Omniglot(raw, background=background, download=True)
            xs, ys = [], []
            for img, label in ds:  # one-time conversion: per-image Python is fine here
                ink = Image.fromarray(255 - np.asarray(img.convert("L"), np.uint8), "L")
                xs.append(np.asarray(ink.resize((28, 28), Image.BOX), np.uint8))
                ys.append(label)
            return np.stack(xs), np.asarray(ys, np.int16)

        (xtr, ytr), (xte, yte) = part(True), part(False)
        return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    if name == "digits":
        return _digits_arrays()
    raise DataError(f"unknown dataset {name!r}")


def _write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write to a temporary file and rename: an interrupted prepare leaves nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare(name: str, data_dir: str | os.PathLike) -> Path:
    """Download `name` through torchvision (digits needs no download) and write `<name>.npz`."""
    data_dir = Path(data_dir).expanduser()
    path = npz_path(name, data_dir)
    if name == "binary_mnist" and npz_path("mnist", data_dir).exists():
        arrays = binarize(load_arrays("mnist", data_dir))
    else:
        arrays = _download(name, data_dir)
    _write_npz(arrays, path)
    return path


KEYS = ("x_train", "y_train", "x_test", "y_test")


def inspect_npz(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's (shape, dtype) in an .npz, from the .npy headers alone (nothing decompressed
    past them), or DataError naming the file and what is wrong with it."""
    import zipfile

    if path.is_dir():
        raise DataError(f"{path}: a folder, not a dataset file (an .npz)")
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {reason})") from None


def check_file(name: str, path: Path, n_valid: int = 0) -> DatasetSpec:
    """Check a dataset file against its layout before anything trains: the four arrays, uint8
    images of the dataset's shape (a dataset of one's own: its x_train's, the same in x_test), one
    label per image, a test split, and more training images than the validation split takes.
    n_valid: the run's validation size (0: the spec's). Returns the spec (inferred for a dataset of
    one's own, binary not yet known: spec_of says).
    One DataError line naming the file and the problem."""
    arrays = inspect_npz(path)
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        how = (f"rebuild it with `python -m iabf.data prepare {name} --data-dir {path.parent}`" if name in SPECS else
               "a dataset file holds uint8 " + ", ".join(KEYS))
        raise DataError(f"{path}: lacks {', '.join(missing)}; {how}")
    for split_ in ("train", "test"):
        if arrays[f"x_{split_}"][1] != np.uint8:
            raise DataError(f"{path}: x_{split_} is {arrays[f'x_{split_}'][1]}; expected uint8 pixels 0..255 (the "
                            f"layout of `python -m iabf.data prepare`)")
    if name in SPECS:
        spec = SPECS[name]
    else:
        try:
            spec = infer(name, arrays["x_train"][0], binary=False)
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
    spec = override(spec, n_valid)
    c, h, w = spec.shape
    want = (h, w) if c == 1 else (h, w, c)
    for split_ in ("train", "test"):
        (shape, _), (labels, _) = arrays[f"x_{split_}"], arrays[f"y_{split_}"]
        if tuple(shape[1:]) != want:
            raise DataError(f"{path}: x_{split_} has images of shape {tuple(shape[1:])}; {name} expects {want}")
        if len(labels) != 1 or labels[0] != shape[0]:
            raise DataError(f"{path}: y_{split_} has shape {labels}; expected one label per image ({shape[0]},)")
        if shape[0] == 0:
            raise DataError(f"{path}: x_{split_} has no images")
    check_split(path, name, arrays["x_train"][0][0], spec.n_valid)
    return spec


def check_split(where, name: str, n_train: int, n_valid: int) -> None:
    """The validation split leaves training images (DataError, one line naming `where`)."""
    if n_train <= n_valid:
        raise DataError(f"{where}: x_train has {n_train} images; {name}'s validation split takes "
                        f"{n_valid:,} of them, so at least {n_valid + 1:,} are needed")


def spec_of(name: str, data_dir: str | os.PathLike, arrays: dict | None = None, n_valid: int = 0,
            likelihood: str = "auto") -> DatasetSpec:
    """A dataset's spec as a run uses it: the table's, or for a dataset of one's own inferred from
    its file (its arrays, when already read: binary when every pixel is 0 or 255); then the run's
    overrides (datasets.override: its validation size and likelihood)."""
    if name in SPECS:
        return override(SPECS[name], n_valid, likelihood)
    x = (arrays or load_arrays(name, data_dir, n_valid=n_valid))["x_train"]   # checked there (check_file)
    return override(infer(name, x.shape, binary=bool(np.isin(x, (0, 255)).all())), n_valid, likelihood)


def load_arrays(name: str, data_dir: str | os.PathLike, download: bool = False, n_valid: int = 0) -> dict[str, np.ndarray]:
    path = npz_path(name, data_dir)
    if path.exists():
        check_file(name, path, n_valid)
        try:
            with np.load(path, allow_pickle=False) as d:
                return {k: d[k] for k in KEYS}
        except (OSError, ValueError, EOFError) as e:   # a member damaged past its header
            raise DataError(f"{path}: cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        check_available(name, data_dir, n_valid)
    except DataError:
        if not download:
            raise
        return load_arrays(name, prepare(name, data_dir).parent, n_valid=n_valid)
    if name == "digits":  # bundled with scikit-learn: always available offline
        return _digits_arrays()
    return binarize(load_arrays("mnist", data_dir, n_valid=n_valid))  # binary_mnist: deterministic, so no file is needed


def check_available(name: str, data_dir: str | os.PathLike, n_valid: int = 0) -> None:
    """Raise DataError (saying how to prepare it) unless `name` can be loaded offline from data_dir,
    from a file that fits its layout (check_file: headers only, so a study checks in milliseconds)."""
    if name == "digits":   # bundled with scikit-learn: no file to check, only the split
        check_split("digits (scikit-learn's)", name, N_TRAIN_DIGITS, override(SPECS[name], n_valid).n_valid)
        return
    for source in sources(name):
        if npz_path(source, data_dir).exists():
            check_file(name, npz_path(source, data_dir), n_valid)
            return
    raise _missing(name, data_dir)


def sources(name: str) -> tuple[str, ...]:
    """The files a dataset can be read from, in order: binary_mnist its own, else MNIST's (binarized once,
    deterministically); digits none (scikit-learn's)."""
    return () if name == "digits" else (name, "mnist") if name == "binary_mnist" else (name,)


def source_file(name: str, data_dir: str | os.PathLike) -> Path | None:
    """The file a dataset is read from in data_dir, None for one that needs none (digits) or is not there."""
    return next((npz_path(s, data_dir) for s in sources(name) if npz_path(s, data_dir).exists()), None)


def on_this_node(name: str, data_dir: str | os.PathLike, published: dict[str, str] | None) -> str:
    """The data folder a trial reads `name` from on the node it runs on: data_dir when the file is there;
    else the copy its study put on the storage (`published`: file name -> URI or path, studies/reach.py),
    fetched into data_dir, or ~/.cache/iabf/datasets where data_dir cannot be written: a worker that joined
    before the dataset was prepared on the head gets it all the same. Raises DataError, one line."""
    from .storage import copy, folder_problem

    try:
        check_available(name, data_dir)
        return str(data_dir)
    except DataError as missing:
        files = [f"{s}.npz" for s in sources(name) if f"{s}.npz" in (published or {})]
        if not files:
            host = os.uname().nodename
            raise DataError(f"on node {host}: {missing}; its study put no copy on its storage") from None
    here = Path(data_dir) if not folder_problem(data_dir) else Path("~/.cache/iabf/datasets").expanduser()
    if not (here / files[0]).exists():
        try:
            copy(published[files[0]], str(here / files[0]))
        except OSError as e:
            raise DataError(f"on node {os.uname().nodename}: dataset {name} is not in {data_dir}, and its copy "
                            f"{published[files[0]]} could not be fetched ({' '.join(str(e).split())[:200]})") from None
    return str(here)


def _missing(name: str, data_dir) -> DataError:
    if name not in SPECS:
        return DataError(f"dataset {name!r}: no file {npz_path(name, data_dir)}; a dataset of one's own is a <name>.npz "
                         f"of uint8 {', '.join(KEYS)} in --data-dir (known datasets: {', '.join(SPECS)})")
    return DataError(f"dataset file {npz_path(name, data_dir)} not found; prepare it with "
                     f"`python -m iabf.data prepare {name} --data-dir {Path(data_dir)}` (needs internet), "
                     f"or point --data-dir at a folder that has it")


def split(name: str, arrays: dict[str, np.ndarray], spec: DatasetSpec | None = None) -> tuple[np.ndarray, ...]:
    """(train, valid, test) images as (N, C, H, W) uint8."""
    def nchw(x):
        return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x[:, None]

    spec = spec or SPECS[name]
    x, n_val = nchw(arrays["x_train"]), spec.n_valid
    if spec.val_last:  # CIFAR-10: the reference keeps data_batch_5 (the last 10k) for validation
        train_idx, val_idx = np.arange(len(x) - n_val), np.arange(len(x) - n_val, len(x))
    else:
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        train_idx, val_idx = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    return x[train_idx], x[val_idx], nchw(arrays["x_test"])


def load(name: str, data_dir: str | os.PathLike, device: torch.device | str = "cpu",
         max_train_examples: int = 0, download: bool = False, n_valid: int = 0, likelihood: str = "auto") -> Splits:
    """Read the arrays once and put them on `device`; training then indexes them directly.
    n_valid, likelihood: the run's overrides of the dataset's spec (datasets.override)."""
    arrays = load_arrays(name, data_dir, download, n_valid)
    spec = spec_of(name, data_dir, arrays, n_valid, likelihood)
    train, val, test = split(name, arrays, spec)
    if max_train_examples:
        train = train[:max_train_examples]

    import torch   # here, not at the top: a study's driver checks the files with numpy alone, never importing torch

    def dev(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Splits(dev(train), dev(val), dev(test), binary=spec.binary)


def load_for(cfg, device: torch.device | str = "cpu") -> Splits:
    """The data a run of `cfg` (iabf.config.Config) trains on: its dataset, folder, training
    subset and spec overrides."""
    return load(cfg.dataset, cfg.data_dir, device, cfg.max_train_examples, cfg.download, cfg.n_valid, cfg.likelihood)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iabf.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="download a dataset through torchvision and write <name>.npz")
    pp.add_argument("name", choices=sorted(N_VALID))
    pp.add_argument("--data-dir", default="data", help="where <name>.npz is written (default: data)")
    pi = sub.add_parser("info", help="the spec a dataset trains with (inferred for one of your own) and its splits")
    pi.add_argument("name", help=f"one of {', '.join(SPECS)}, or the name of a <name>.npz in --data-dir")
    pi.add_argument("--data-dir", default="data")
    pi.add_argument("--n-valid", type=int, default=0, help="a run's validation size (0: the spec's)")
    pi.add_argument("--likelihood", choices=LIKELIHOODS, default="auto", help="a run's likelihood (auto: the spec's)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "prepare":
            print(prepare(args.name, args.data_dir))
        else:
            if args.n_valid < 0:
                raise DataError(f"--n-valid={args.n_valid} is not allowed: 0 (the spec's) or a positive integer")
            arrays = load_arrays(args.name, args.data_dir, n_valid=args.n_valid)
            spec = spec_of(args.name, args.data_dir, arrays, args.n_valid, args.likelihood)
            tr, va, te = split(args.name, arrays, spec)
            from .datasets import default_bits
            how = "known" if args.name in SPECS else \
                f"inferred from {npz_path(args.name, args.data_dir)} (validation: {OWN_VALID_FRACTION:.0%} of x_train)"
            changed = [f"n_valid={args.n_valid}"] * bool(args.n_valid) + \
                [f"likelihood={args.likelihood}"] * (args.likelihood != "auto")
            how += f"; overridden: {', '.join(changed)}" if changed else ""
            print(f"{args.name} ({how}): images {spec.shape} (C, H, W), "
                  f"{'Bernoulli (binary pixels)' if spec.binary else 'squared error'} likelihood, {spec.arch} model, "
                  f"{default_bits(args.name)} bits by default; train {tr.shape[0]}, valid {va.shape[0]}, test {te.shape[0]}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main())
