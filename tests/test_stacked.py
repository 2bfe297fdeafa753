"""Stacked seeds (Config.stack): one vmapped step is S independent single-seed steps, a stacked run
is S seeds' runs (statistically), checkpoints are single-seed ones and resume exactly."""
import copy
import math
import statistics

import pytest
import torch
from scipy import stats

from iabf import metrics as M
from iabf import stacked, train
from iabf.config import Config, ConfigError, seed_configs
from iabf.data import load, to_float
from iabf.models import build


def models_for(seed: int, dataset: str = "digits", shape=(1, 8, 8), bits: int = 16) -> dict:
    torch.manual_seed(seed)
    return dict(zip(stacked.NAMES, build(dataset, shape, bits)))


def single_opts(m: dict) -> dict:
    return {"model": torch.optim.Adam([*m["encoder"].parameters(), *m["decoder"].parameters()], lr=1e-3),
            "discriminator": torch.optim.Adam(m["discriminator"].parameters(), lr=1e-3)}


@pytest.fixture(scope="module")
def batches():
    data = load("digits", "unused")
    return to_float(data.train[:300]).reshape(3, 100, 1, 8, 8)


@pytest.mark.parametrize("method", ["necst", "abf", "iabf"])
def test_a_stack_of_one_takes_exactly_the_single_seed_step(method, batches):
    """vmap over one seed draws the same random numbers as the plain step on the global generator,
    so two steps must agree to float precision: weights, Adam state, statistics."""
    cfg = Config(dataset="digits", method=method, K=3, weight_decay=1e-3, clean_weight=0.1)
    single = models_for(0)
    skeleton, params, opts = stacked.stack_models([copy.deepcopy(single)], lr=1e-3)
    s_opts = single_opts(single)
    for x in batches[:2]:
        torch.manual_seed(7)
        a = train.train_step(x, single, s_opts, False, cfg, None)
        torch.manual_seed(7)
        b = stacked.train_step(x[None], skeleton, params, opts, False, cfg)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k][0].item() == pytest.approx(a[k].item(), rel=1e-5, abs=1e-6), k
    for k in stacked.NAMES:
        for name, w in single[k].named_parameters():
            assert torch.allclose(params[k][name][0], w, atol=1e-6), f"{k}.{name}"


def test_seeds_in_a_stack_do_not_interact(batches):
    """Seed 0's step is the same whatever model and data sit beside it in the stack."""
    cfg = Config(dataset="digits", method="iabf", K=3)
    after = []
    for other in (1, 2):
        skeleton, params, opts = stacked.stack_models([models_for(0), models_for(other)], lr=1e-3)
        x = torch.stack([batches[0], batches[other]])
        torch.manual_seed(3)
        out = stacked.train_step(x, skeleton, params, opts, False, cfg)
        after.append(({k: {n: w[0].clone() for n, w in params[k].items()} for k in stacked.NAMES}, out))
    (w1, o1), (w2, o2) = after
    for k in stacked.NAMES:
        for n in w1[k]:
            assert torch.equal(w1[k][n], w2[k][n]), f"{k}.{n}"
    assert o1["loss"][0] == o2["loss"][0] and o1["loss"][1] != o2["loss"][1]


def test_stacked_run_matches_separate_runs_statistically():
    """4 seeds stacked against the same 4 seeds run separately (digits, NECST, 4 epochs): the same
    initialisation per seed, different noise streams, so equal in distribution: the means agree
    within the seeds' spread (Welch's t-test), and every seed improves on its untrained start."""
    cfg = Config(dataset="digits", method="necst", epochs=4, K=3, stack=4, seed=10)
    final, states = train.run(cfg)
    seeds = [c.seed for c in seed_configs(cfg)]
    stacked_test = [final[M.seed_key(s, M.TEST_DISTORTION)] for s in seeds]
    separate_test = [train.run(c)[0][M.TEST_DISTORTION] for c in (Config(**{**cfg.to_dict(), "stack": 1, "seed": s})
                                                                  for s in seeds)]
    assert len(set(stacked_test)) == 4                                  # four different seeds, not one copy
    assert stats.ttest_ind(stacked_test, separate_test, equal_var=False).pvalue > 0.01
    spread = statistics.stdev(separate_test + stacked_test)
    assert abs(statistics.mean(stacked_test) - statistics.mean(separate_test)) < 3 * spread
    untrained = 6.0   # digits' squared error per image with every pixel at 0.5 is above 6; trained: ~4.8
    assert max(stacked_test) < untrained
    # each seed's checkpoint is a normal single-seed one: its config, its own best epoch, loadable
    assert [s["config"]["seed"] for s in states] == seeds
    assert final[M.TEST_DISTORTION] == pytest.approx(statistics.mean(stacked_test))
    _, enc, dec = train.models_from_state(states[2])
    assert enc(torch.rand(2, 1, 8, 8)).shape == (2, 16)


def test_stacked_seeds_start_from_their_separate_runs_initialisation():
    cfg = Config(dataset="digits", method="iabf", epochs=1, stack=2, seed=5, lr=1e-12)  # lr ~ 0: weights stay
    _, states = train.run(cfg)
    for st, seed in zip(states, (5, 6)):
        ref = models_for(seed)
        for k in stacked.NAMES:
            for name, w in ref[k].state_dict().items():
                assert torch.allclose(st["model"][k][name], w, atol=1e-6), f"seed {seed} {k}.{name}"


def test_stacked_resume_continues_exactly():
    cfg = Config(dataset="digits", method="iabf", epochs=3, K=3, stack=2)
    straight = []
    train.run(cfg, lambda m, c: straight.append((m, copy.deepcopy(c()))))
    resumed = []
    train.run(cfg, lambda m, _: resumed.append(m), resume=straight[0][1])
    assert [m[M.EPOCH] for m in resumed] == [2, 3]
    for (a, _), b in zip(straight[1:], resumed):
        for key in (M.seed_key(0, M.TRAIN_LOSS), M.seed_key(1, M.VAL_DISTORTION), M.TEST_DISTORTION):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-6), key
    # the mean over seeds is what Tune, ASHA and the searcher see
    assert straight[-1][0][M.VAL_DISTORTION] == pytest.approx(
        (straight[-1][0][M.seed_key(0, M.VAL_DISTORTION)] + straight[-1][0][M.seed_key(1, M.VAL_DISTORTION)]) / 2)


def test_stack_is_refused_for_the_conv_dataset_below_one_and_with_compile():
    with pytest.raises(ConfigError, match="stack=2 is not allowed: 1 for cifar10"):
        Config(dataset="cifar10", stack=2)
    with pytest.raises(ConfigError, match="stack=0 is not allowed"):
        Config(stack=0)
    with pytest.raises(ConfigError, match="stack=2 is not allowed: 1 with compile"):
        Config(stack=2, compile="default")


def test_cli_writes_one_single_seed_checkpoint_per_seed(tmp_path, capsys):
    rc = train.main(["--dataset", "digits", "--method", "necst", "--epochs", "1", "--stack", "2", "--seed", "3",
                     "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    for seed in (3, 4):
        cfg, _, _ = train.load_models(tmp_path / "r" / f"seed{seed}" / "best.pt")
        assert cfg.seed == seed and cfg.stack == 2
    assert math.isfinite(float(capsys.readouterr().out.strip().splitlines()[-1].split('"test/distortion": ')[1].split(",")[0]))


def test_a_diverging_stack_is_one_clear_error():
    with pytest.raises(train.Diverged, match="training diverged at epoch 1: non-finite"):
        train.run(Config(dataset="digits", method="iabf", epochs=2, K=2, stack=2, lr=1e30))
