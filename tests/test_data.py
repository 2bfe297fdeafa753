"""Datasets: splits, the derived BinaryMNIST, the npz layout, errors when a file is missing."""
import numpy as np
import pytest
import torch

from iabf import data
from iabf.data import BINARY, DataError, binarize, load, load_arrays, main, npz_path, prepare, split


def test_digits_read_from_scikit_learns_file_are_load_digits_own():
    """The digits are read from the file load_digits reads, without importing scikit-learn: the same arrays."""
    path = data._digits_file()
    assert path is not None
    for direct, through_sklearn in zip(data._digits_images(path), data._digits_images(None)):
        assert direct.shape == through_sklearn.shape and np.array_equal(direct, through_sklearn)


def test_digits_needs_no_file_and_splits_1200_300_297(tmp_path):
    d = load("digits", tmp_path)
    assert (len(d.train), len(d.val), len(d.test)) == (1200, 300, 297)
    assert d.train.dtype == torch.uint8 and d.image_shape == (1, 8, 8)
    assert d.train.max() == 255 and not d.binary
    assert list(tmp_path.iterdir()) == []           # nothing written by loading


def test_splits_are_fixed_and_disjoint(data_dir):
    a, b = load("mnist", data_dir), load("mnist", data_dir)
    assert torch.equal(a.val, b.val)
    assert (len(a.train), len(a.val), len(a.test)) == (50_000, 10_000, 10_000)
    # no validation image is also a training image (MNIST has a few exact duplicates, so sample)
    train = {t.numpy().tobytes() for t in a.train[:5000]}
    assert sum(v.numpy().tobytes() in train for v in a.val[:5000]) < 5


def test_omniglot_split_sizes(data_dir):
    d = load("omniglot", data_dir)
    assert (len(d.train), len(d.val), len(d.test)) == (18_780, 500, 13_180)
    assert d.image_shape == (1, 28, 28)


def test_binary_mnist_is_a_fixed_bernoulli_draw_of_mnist(data_dir):
    m = load_arrays("mnist", data_dir)
    b1, b2 = load_arrays("binary_mnist", data_dir), binarize(m)
    assert set(np.unique(b1["x_train"])) <= {0, 255}
    assert np.array_equal(b1["x_train"], b2["x_train"])                  # same draw every time
    assert not (b1["x_train"][m["x_train"] == 0]).any()                  # never ink where MNIST has none
    # the ink rate follows the intensities (3-sigma bound over ~47M Bernoulli draws)
    mean_p = (m["x_train"] / 255.0).mean()
    assert abs((b1["x_train"] == 255).mean() - mean_p) < 1e-3
    train, val, test = split("binary_mnist", b1)
    assert (len(train), len(val), len(test)) == (50_000, 10_000, 10_000)
    assert "binary_mnist" in BINARY


def test_prepare_writes_the_shared_layout_atomically(tmp_path, data_dir):
    (tmp_path / "mnist.npz").symlink_to(data_dir / "mnist.npz")
    path = prepare("binary_mnist", tmp_path)       # derived from mnist.npz, no download
    with np.load(path) as z:
        assert sorted(z.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert all(z[k].dtype == np.uint8 for k in z.files)
        assert z["x_train"].shape == (60_000, 28, 28)
    assert not list(tmp_path.glob("*.tmp"))
    assert prepare("digits", tmp_path).exists()


def test_missing_file_offline_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"python -m iabf.data prepare mnist --data-dir"):
        load("mnist", tmp_path)
    assert main(["info", "cifar10", "--data-dir", str(tmp_path)]) == 2


def test_max_train_examples_takes_a_prefix_of_the_training_split(data_dir):
    full, small = load("mnist", data_dir), load("mnist", data_dir, max_train_examples=1234)
    assert len(small.train) == 1234 and torch.equal(small.train, full.train[:1234])
    assert len(small.val) == 10_000


def test_cifar10_keeps_data_batch_5_for_validation(data_dir):
    if not npz_path("cifar10", data_dir).exists():
        pytest.skip("cifar10.npz not in the data folder")
    d = load("cifar10", data_dir)
    raw = load_arrays("cifar10", data_dir)
    assert (len(d.train), len(d.val), len(d.test)) == (40_000, 10_000, 10_000)
    assert d.image_shape == (3, 32, 32)
    assert np.array_equal(d.val[0].numpy(), raw["x_train"][40_000].transpose(2, 0, 1))


def write_idx(path, array):
    """The MNIST idx format (what torchvision downloads and unpacks)."""
    import struct

    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_prepare_mnist_through_torchvision_round_trips_the_arrays(tmp_path, data_dir):
    """`prepare mnist` goes through torchvision.datasets.MNIST; with its raw files already in place
    (no internet here) the npz it writes holds exactly the original arrays."""
    src = load_arrays("mnist", data_dir)
    raw = tmp_path / "raw" / "MNIST" / "raw"
    for name, key in (("train-images-idx3-ubyte", "x_train"), ("train-labels-idx1-ubyte", "y_train"),
                      ("t10k-images-idx3-ubyte", "x_test"), ("t10k-labels-idx1-ubyte", "y_test")):
        write_idx(raw / name, src[key])
    path = prepare("mnist", tmp_path)
    assert path == tmp_path / "mnist.npz"
    out = load_arrays("mnist", tmp_path)
    assert all(np.array_equal(out[k], src[k]) and out[k].dtype == np.uint8 for k in src)
    assert main(["info", "mnist", "--data-dir", str(tmp_path)]) == 0
