"""The training loop on real data, checkpoints and resume, the command line."""
import copy
import json
import math
import subprocess
import sys

import pytest
import torch

from iabf import metrics as M
from iabf.config import Config, ConfigError
from iabf.data import load
from iabf.models import build
from iabf.train import CheckpointError, Diverged, evaluate, load_checkpoint, load_models, main, models_from_state, run, save_checkpoint


@pytest.fixture(scope="module")
def mnist_small(data_dir):
    return load("mnist", data_dir, max_train_examples=3000)


@pytest.mark.parametrize("method", ["necst", "abf", "iabf"])
def test_short_training_on_real_mnist_lowers_validation_distortion(method, mnist_small, data_dir):
    cfg = Config(dataset="mnist", method=method, epochs=4, data_dir=str(data_dir), max_train_examples=3000)
    torch.manual_seed(cfg.seed)                      # the same initialisation run() starts from
    enc, dec, _ = build("mnist", mnist_small.image_shape, cfg.bits)
    start = evaluate(enc, dec, mnist_small.val, False, cfg, seed=0)["distortion"]
    history = []
    final, [state] = run(cfg, lambda m, _: history.append(m), data=mnist_small)
    assert [m[M.EPOCH] for m in history] == [1, 2, 3, 4]
    # untrained: ~190 (sigmoid(0) = 0.5 on every pixel); after 4 short epochs: ~45
    assert final[M.BEST_VAL_DISTORTION] < 0.4 * start
    assert math.isfinite(final[M.TEST_DISTORTION]) and final[M.TEST_DISTORTION] < 0.4 * start
    assert history[-1][M.VAL_DISTORTION] < history[0][M.VAL_DISTORTION]
    assert abs(final[M.TEST_BER] - cfg.eval_eps) < 0.01          # the test channel runs at test eps
    assert 0 < final[M.TEST_ENTROPY] <= 1
    assert state["best_epoch"] == final[M.BEST_EPOCH]


def test_test_metrics_come_from_the_best_validation_epoch(data_dir):
    cfg = Config(dataset="digits", method="necst", epochs=6, lr=3e-2, seed=3)  # a large lr: noisy epochs
    history = []
    final, _ = run(cfg, lambda m, _: history.append(m))
    vals = [m[M.VAL_DISTORTION] for m in history]
    assert final[M.BEST_VAL_DISTORTION] == min(vals)
    assert final[M.BEST_EPOCH] == 1 + vals.index(min(vals))
    assert M.TEST_DISTORTION in final and all(M.TEST_DISTORTION not in m for m in history[:-1])


def test_checkpoint_round_trip_and_resume_continues_exactly(tmp_path):
    cfg = Config(dataset="digits", method="iabf", epochs=4, K=3, seed=1)
    straight = []
    run(cfg, lambda m, _: straight.append(m))

    saved = {}
    def stop_after_2(m, checkpoint):
        if m[M.EPOCH] == 2:
            [state] = checkpoint()
            saved["path"] = save_checkpoint(state, tmp_path / "ckpt.pt")
            raise KeyboardInterrupt  # the process dies here
    with pytest.raises(KeyboardInterrupt):
        run(cfg, stop_after_2)
    state = load_checkpoint(saved["path"])                 # weights_only=True inside
    assert state["epoch"] == 2 and state["config"] == cfg.to_dict()
    assert set(state["model"]) == {"encoder", "decoder", "discriminator"}
    assert set(state["optimizer"]) == {"model", "discriminator"}

    resumed = []
    run(cfg, lambda m, _: resumed.append(m), resume=[state])
    assert [m[M.EPOCH] for m in resumed] == [3, 4]
    for a, b in zip(straight[2:], resumed):                # same numbers as never having stopped
        assert a[M.VAL_DISTORTION] == pytest.approx(b[M.VAL_DISTORTION], rel=1e-5)
        assert a[M.TRAIN_LOSS] == pytest.approx(b[M.TRAIN_LOSS], rel=1e-5)


def test_resume_from_the_final_checkpoint_reports_the_end_again():
    """A trial restored from its last checkpoint (the driver died after it finished) trains no more
    but reports its final metrics again, so a tracker sees it completed."""
    cfg = Config(dataset="digits", method="necst", epochs=2)
    final, states = run(cfg)
    again = []
    run(cfg, lambda m, _: again.append(m), resume=states)
    assert len(again) == 1 and again[0][M.EPOCH] == 2
    assert again[0][M.VAL_DISTORTION] == pytest.approx(final[M.VAL_DISTORTION])   # the metric Tune requires
    assert again[0][M.TEST_DISTORTION] == pytest.approx(final[M.TEST_DISTORTION])
    assert again[0][M.BEST_EPOCH] == final[M.BEST_EPOCH]


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt is unreadable"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_trains_saves_best_and_prints_json_last(tmp_path, capsys):
    rc = main(["--dataset", "digits", "--method", "abf", "--epochs", "2", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc == 0
    final = json.loads(out.strip().splitlines()[-1])
    assert final[M.EPOCH] == 2 and M.TEST_DISTORTION in final
    assert "epoch    1/2" in err and "epoch    2/2" in err
    cfg, enc, dec = load_models(tmp_path / "r" / "best.pt")
    assert cfg.method == "abf" and cfg.dataset == "digits"
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == final


@pytest.mark.parametrize("args, needle", [
    (["--eps", "0.7"], "eps=0.7 is not allowed"),
    (["--eps", "-0.1"], "eps=-0.1 is not allowed"),
    (["--dataset", "svhn"], "dataset 'svhn': no file"),                  # a name, but no svhn.npz
    (["--dataset", "svhn/../x"], "dataset='svhn/../x' is not allowed"),  # not a file name
    (["--method", "vae"], "method='vae' is not allowed"),
    (["--K", "0"], "K=0 is not allowed"),
    (["--lam", "-0.01"], "lam=-0.01 is not allowed"),
    (["--eps", "abc"], "invalid float value"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent"], "python -m iabf.data prepare mnist"),
])
def test_cli_bad_input_is_one_line_and_non_zero(args, needle, capsys, tmp_path):
    try:
        rc = main(args + ["--epochs", "1", "--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse's own type errors
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "o").exists()                     # nothing half-written


def test_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['lamda'\]"):
        Config.from_dict({"lamda": 0.1})
    with pytest.raises(ConfigError, match="K='5' is not allowed: expected int"):
        Config.from_dict({"K": "5"})
    assert Config.from_dict({"eps": 0}).eps == 0.0                 # an int where a float is expected


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "iabf.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--dataset", "--method", "--eps", "--lam", "--K", "--epochs", "--data-dir",
                 "--max-train-examples", "--device", "--out", "--flip", "--tc-input", "--clean-weight"):
        assert flag in out.stdout


def test_divergence_is_one_clear_error(tmp_path, capsys):
    rc = main(["--dataset", "digits", "--method", "necst", "--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: training diverged at epoch 1: non-finite")
    assert not (tmp_path / "o").exists()


def poisoned(state: dict) -> dict:
    """A digits checkpoint whose encoder weights are finite but whose probabilities are NaN on
    every CPU: the first layer sends every (non-negative, partly bright) image to +inf, whatever the
    summation order, and the second adds +inf and -inf for every bit."""
    state = copy.deepcopy(state)
    enc = state["model"]["encoder"]
    w1, w2 = (k for k in enc if k.endswith("weight"))
    enc[w1].fill_(3e38)
    enc[w2].copy_(torch.tensor([1.0, -1.0]).repeat(enc[w2].shape[1] // 2).expand_as(enc[w2]))
    assert all(torch.isfinite(w).all() for w in enc.values())
    return state


@pytest.mark.parametrize("method", ["necst", "iabf"])
def test_nan_probabilities_with_finite_weights_are_divergence_at_that_epoch(method):
    """What failed on some CPUs: NaN probabilities while the weights are still finite. Plain and
    stacked runs end with Diverged at the epoch it happened, naming the seed in a stack."""
    cfg = Config(dataset="digits", method=method, epochs=3, K=2, max_train_examples=300)
    _, [state] = run(Config(**{**cfg.to_dict(), "epochs": 1}))
    state["config"] = cfg.to_dict()
    with pytest.raises(Diverged, match=r"^training diverged at epoch 2: non-finite training loss \(lr=0.001\)"):
        run(cfg, resume=[poisoned(state)])
    stack = Config(**{**cfg.to_dict(), "stack": 2})
    _, states = run(Config(**{**stack.to_dict(), "epochs": 1}))
    with pytest.raises(Diverged, match=r"^training diverged at epoch 2: non-finite training loss for seed 1 "):
        run(stack, resume=[states[0], poisoned(states[1])])


def test_compiled_training_keeps_plain_checkpoints_and_matches_uncompiled():
    """Config.compile wraps the networks for the training step only: the same numbers as
    uncompiled training (up to float reassociation), and checkpoints with the plain module keys."""
    cfg = Config(dataset="digits", method="abf", epochs=2, K=2, max_train_examples=500)
    plain, _ = run(cfg)
    compiled, [state] = run(Config(**{**cfg.to_dict(), "compile": "default"}))
    assert compiled[M.TRAIN_LOSS] == pytest.approx(plain[M.TRAIN_LOSS], rel=1e-3)
    assert compiled[M.TEST_DISTORTION] == pytest.approx(plain[M.TEST_DISTORTION], rel=1e-3)
    assert not any("_orig_mod" in k for k in state["model"]["decoder"])
    _, enc, dec = models_from_state(state)
    assert dec(enc(torch.rand(3, 1, 8, 8)).sigmoid()).shape == (3, 1, 8, 8)


def test_the_reference_preset_is_one_option_and_options_given_with_it_win(tmp_path, capsys):
    from iabf.config import PRESETS, config_from_args, config_parser

    parse = lambda *a: config_from_args(config_parser("t", "").parse_args(list(a)))   # noqa: E731
    ref = parse("--preset", "reference")
    assert {k: getattr(ref, k) for k in PRESETS["reference"]} == PRESETS["reference"]
    assert (ref.flip, ref.tc_input, ref.clean_weight, ref.vimco_signal, ref.val_batch) == ("topk", "probs", 0.1, "loss", 100)
    mixed = parse("--preset", "reference", "--flip", "budget", "--val-batch", "0")
    assert (mixed.flip, mixed.val_batch, mixed.tc_input) == ("budget", 0, "probs")
    assert parse() == Config() and parse("--preset", "paper") == Config()
    assert Config.from_dict({"preset": "reference", "method": "necst"}).vimco_signal == "loss"
    with pytest.raises(ConfigError, match="preset='code' is not allowed: one of paper, reference"):
        Config.from_dict({"preset": "code"})
    with pytest.raises(SystemExit) as e:
        main(["--preset", "code", "--dataset", "digits", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--preset" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_validation_on_one_batch_draws_a_fresh_reproducible_batch_each_epoch():
    from iabf.train import validation_images

    data = load("digits", "unused")
    cfg = Config(dataset="digits", val_batch=100, seed=4)
    a, b = validation_images(data, cfg, 1), validation_images(data, cfg, 2)
    assert a.shape[0] == 100 and not torch.equal(a, b) and torch.equal(a, validation_images(data, cfg, 1))
    assert validation_images(data, Config(dataset="digits"), 1) is data.val
    history = []
    run(Config.from_dict({"dataset": "digits", "method": "necst", "epochs": 2, "K": 2, "preset": "reference"}),
        lambda m, _: history.append(m))
    assert len(history) == 2 and all(math.isfinite(m[M.VAL_DISTORTION]) for m in history)
