"""A dataset of one's own, with no code change: any <name>.npz in the data folder trains, from the
CLI and in a study, with its spec inferred from its arrays (its validation size and likelihood
overridable, its display name set by the study), and the report names it."""
import os
import subprocess
import sys
from pathlib import Path

import re

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from iabf import data, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def flipped(data_dir, tmp_path) -> Path:
    """600 real MNIST images flipped left-right: 500 to train on (50 of them validate), 100 to test."""
    with np.load(data_dir / "mnist.npz") as d:
        x, y = d["x_train"][:600, :, ::-1], d["y_train"][:600]
    np.savez(tmp_path / "mnist_flipped.npz", x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    return tmp_path


def test_its_spec_is_inferred_from_its_arrays_and_shown_by_info(flipped, capsys):
    spec = data.spec_of("mnist_flipped", flipped)
    assert spec.shape == (1, 28, 28) and spec.arch == "mlp" and not spec.binary and spec.n_valid == 50
    assert data.main(["info", "mnist_flipped", "--data-dir", str(flipped)]) == 0
    out = capsys.readouterr().out
    assert "inferred from" in out and "(1, 28, 28)" in out and "squared error" in out and "train 450, valid 50" in out
    # 0/255 pixels: a Bernoulli likelihood, as for Binary MNIST
    with np.load(flipped / "mnist_flipped.npz") as d:
        arrays = {k: (d[k] > 127).astype(np.uint8) * 255 if k.startswith("x") else d[k] for k in d.files}
    np.savez(flipped / "ink.npz", **arrays)
    assert data.spec_of("ink", flipped).binary


def test_its_spec_is_overridden_by_the_run(flipped, capsys):
    spec = data.spec_of("mnist_flipped", flipped, n_valid=120, likelihood="bernoulli")
    assert spec.n_valid == 120 and spec.binary and spec.shape == (1, 28, 28)
    splits = data.load("mnist_flipped", flipped, n_valid=120, likelihood="bernoulli")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (380, 120, 100) and splits.binary
    # the same split for every run that asks the same size: the validation images are a seeded draw
    again = data.load("mnist_flipped", flipped, n_valid=120)
    assert (again.val == splits.val).all() and not again.binary
    # a known dataset too: MNIST with a Bernoulli likelihood is a run's choice, its split the table's
    assert data.spec_of("mnist", flipped, likelihood="bernoulli").binary and data.spec_of("mnist", flipped).n_valid == 10_000
    assert data.main(["info", "mnist_flipped", "--data-dir", str(flipped), "--n-valid", "100", "--likelihood", "bernoulli"]) == 0
    out = capsys.readouterr().out
    assert "overridden: n_valid=100, likelihood=bernoulli" in out and "Bernoulli" in out and "train 400, valid 100" in out


@pytest.mark.parametrize("n_valid", [500, 501, 10_000])
def test_a_validation_split_that_leaves_no_training_image_is_one_line(flipped, tmp_path, capsys, n_valid):
    rc = train.main(["--dataset", "mnist_flipped", "--epochs", "1", "--n-valid", str(n_valid),
                     "--data-dir", str(flipped), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not (tmp_path / "run").exists()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "mnist_flipped.npz" in errors[0] and "x_train has 500 images" in errors[0] and f"{n_valid:,}" in errors[0]


def test_it_trains_from_the_cli(flipped, tmp_path):
    rc = train.main(["--dataset", "mnist_flipped", "--method", "abf", "--epochs", "1", "--K", "2",
                     "--data-dir", str(flipped), "--out", str(tmp_path / "run")])
    assert rc == 0 and (tmp_path / "run" / "best.pt").exists()
    cfg, enc, dec = train.load_models(tmp_path / "run" / "best.pt")
    assert cfg.dataset == "mnist_flipped" and cfg.bits == 100 and dec.image_shape == (1, 28, 28)


@pytest.mark.slow
def test_it_runs_in_a_study_and_its_report_names_it(flipped, tmp_path):
    space = {"study": "own", "dataset": "mnist_flipped", "fixed": {"epochs": 2, "K": 2},
             "by_dataset": {"mnist_flipped": {"n_valid": 100, "likelihood": "bernoulli"}},
             "display": {"mnist_flipped": "Flipped MNIST"},
             "variants": [{"method": "necst"}, {"method": "abf"}], "seeds": [0, 1], "resources": {"cpu": 1}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(space))
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "ablation.py"), "--space", str(tmp_path / "own.yaml"),
                          "--data-dir", str(flipped), "--storage", str(tmp_path / "results"), "--tracking-uri",
                          f"sqlite:///{tmp_path / 'mlflow.db'}", "--chain-steps", "20"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = next((tmp_path / "results").glob("own-*/report"))
    table = pd.read_csv(report / "table1.csv")
    assert set(table.dataset) == {"mnist_flipped"} and sorted(table.arm) == ["abf", "necst"] and (table.n == 2).all()
    assert "| Flipped MNIST |" in (report / "table1.md").read_text()
    assert "Flipped MNIST" in (report / "table1.tex").read_text()
    # every run trained with the study's spec overrides, and MLflow has them
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("own")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("phase") == "confirm"]
    assert len(children) == 4 and all(r.data.params["n_valid"] == "100" and r.data.params["likelihood"] == "bernoulli"
                                      for r in children)


def test_a_study_refuses_a_display_name_it_cannot_use(flipped, tmp_path):
    from studies.space import SpaceError
    from studies.validation import validate

    base = {"study": "own", "dataset": "mnist_flipped"}
    assert validate({**base, "display": {"mnist_flipped": "Flipped MNIST"}}, "own.yaml").display == {"mnist_flipped": "Flipped MNIST"}
    for display, says in (({"mnist": "Digits"}, "display.mnist: not a dataset of this study"),
                          ({"mnist_flipped": "a | b"}, "display.mnist_flipped: 'a | b' is not allowed"),
                          ({"mnist_flipped": ""}, "is not allowed: up to 60"),
                          ({"mnist_flipped": 3}, "3 is not allowed")):
        with pytest.raises(SpaceError, match=re.escape(says)):
            validate({**base, "display": display}, "own.yaml")
    with pytest.raises(SpaceError, match="one of the paper's datasets and keeps its name"):
        validate({"study": "s", "dataset": "mnist", "display": {"mnist": "Mine"}}, "s.yaml")
