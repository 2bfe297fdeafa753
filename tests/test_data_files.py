"""Dataset files checked before anything trains (iabf.data.check_file): whatever an .npz holds, it is
either accepted (the layout `python -m iabf.data prepare` writes) or refused in one line that names
the file and the problem, exit 2, no traceback, nothing written; from the CLI and from a study."""
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iabf import train
from iabf.data import DataError, N_VALID, check_file

NAME = "omniglot"                       # 28x28 images and a validation split of 500: small valid files
ARRAY = st.fixed_dictionaries({
    "n": st.sampled_from([0, 1, 499, 500, 501, 640]),
    "hw": st.sampled_from([(28, 28), (32, 32), (28, 27)]),
    "channels": st.sampled_from([None, 1, 3]),
    "dtype": st.sampled_from(["uint8", "float32", "float64", "int16"]),
    "bad_value": st.sampled_from([None, np.nan, np.inf, -np.inf]),
    "labels": st.sampled_from(["same", "fewer", "none", "2d"]),
})


def images(spec: dict) -> dict:
    shape = (spec["n"], *spec["hw"], *([spec["channels"]] if spec["channels"] else []))
    x = np.zeros(shape, dtype=spec["dtype"])
    if spec["bad_value"] is not None and x.size and x.dtype.kind == "f":
        x.flat[x.size // 2] = spec["bad_value"]                 # NaN / inf somewhere inside
    n = spec["n"]
    y = {"same": np.zeros(n, np.uint8), "fewer": np.zeros(max(n - 1, 0), np.uint8), "none": None,
         "2d": np.zeros((n, 2), np.uint8)}[spec["labels"]]
    return {"x": x, "y": y}


def valid(spec: dict, train_split: bool) -> bool:
    return (spec["dtype"] == "uint8" and spec["hw"] == (28, 28) and spec["channels"] in (None,)
            and spec["labels"] == "same" and spec["n"] > (N_VALID[NAME] if train_split else 0))


@settings(max_examples=60)
@given(train_spec=ARRAY, test_spec=ARRAY, drop=st.sampled_from([None, "x_test", "y_train"]))
def test_a_file_is_accepted_exactly_when_it_fits_the_layout_else_one_line_names_it(tmp_path_factory, train_spec,
                                                                                 test_spec, drop):
    folder = tmp_path_factory.mktemp("npz")
    arrays = {}
    for split, spec in (("train", train_spec), ("test", test_spec)):
        made = images(spec)
        arrays[f"x_{split}"] = made["x"]
        if made["y"] is not None:
            arrays[f"y_{split}"] = made["y"]
    arrays.pop(drop, None)
    path = folder / f"{NAME}.npz"
    np.savez_compressed(path, **arrays)
    fits = drop is None and valid(train_spec, True) and valid(test_spec, False)
    if fits:
        check_file(NAME, path)
        return
    with pytest.raises(DataError) as e:
        check_file(NAME, path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message


CORRUPT = {
    "truncated": lambda p: p.write_bytes(good_bytes()[:len(good_bytes()) // 2]),
    "not a zip": lambda p: p.write_bytes(b"hello, not a dataset"),
    "empty file": lambda p: p.write_bytes(b""),
    "a folder": lambda p: p.mkdir(),
    "a zip without arrays": lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "x"),
}


def good_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=np.zeros((501, 28, 28), np.uint8), y_train=np.zeros(501, np.uint8),
                        x_test=np.zeros((3, 28, 28), np.uint8), y_test=np.zeros(3, np.uint8))
    return buf.getvalue()


@pytest.mark.parametrize("damage", list(CORRUPT), ids=list(CORRUPT))
def test_the_train_cli_refuses_a_damaged_file_in_one_line_exit_2_and_writes_nothing(tmp_path, capsys, damage):
    CORRUPT[damage](tmp_path / f"{NAME}.npz")
    rc = train.main(["--dataset", NAME, "--epochs", "1", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"error: {tmp_path / (NAME + '.npz')}") and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()


def test_a_file_that_fits_trains(tmp_path):
    (tmp_path / f"{NAME}.npz").write_bytes(good_bytes())
    rc = train.main(["--dataset", NAME, "--epochs", "1", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"),
                     "--K", "1"])
    assert rc == 0 and (tmp_path / "out" / "best.pt").exists()
