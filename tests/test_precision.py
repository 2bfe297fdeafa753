"""Config.precision (iabf/precision.py): fp32 as before, bf16 close to it and float32 where it must be,
tf32 refused off CUDA, and the option in a study like any other parameter. Independent of the CPU:
bf16 autocast runs (emulated, slower) on a CPU without bf16 kernels too."""
import math
import warnings

import pytest
import torch

from iabf import precision
from iabf.channels import bernoulli, bernoulli_log_prob, sample_noisy
from iabf.config import Config, ConfigError
from iabf.data import load, to_float
from iabf.losses import adversary, discriminator_loss, log_likelihood, objective, tc_estimate, vimco
from iabf.models import build
from iabf.train import run
from studies.plan import groups
from studies.validation import validate

CPU = torch.device("cpu")


def test_fp32_gives_the_numbers_of_the_code_before_the_option():
    # stored from the commit before `precision` existed (digits, iabf, 1 epoch, 300 images, seed 0). Within
    # 1e-4 relative, not bit for bit: another CPU's float32 kernels sum in another order
    metrics, _ = run(Config(dataset="digits", method="iabf", epochs=1, max_train_examples=300, seed=0, precision="fp32"))
    assert metrics["test/distortion"] == pytest.approx(10.183810234069824, rel=1e-4)
    assert metrics["train/loss"] == pytest.approx(10.965951919555664, rel=1e-4)
    default, _ = run(Config(dataset="digits", method="iabf", epochs=1, max_train_examples=300, seed=0))
    assert default == {**default, **{k: v for k, v in metrics.items() if not k.startswith("sys/")}}   # bit for bit


def one_step(cfg: Config, data):
    """The loss of eq. 29 and its gradients for one batch, from the same initialisation and noise."""
    torch.manual_seed(0)
    enc, dec, disc = build(cfg.dataset, data.image_shape, cfg.bits)
    x = to_float(data.train[:100])
    gen = torch.Generator().manual_seed(0)
    with precision.autocast(cfg.precision, CPU):
        p = torch.sigmoid(enc(x).float())
        y = bernoulli(p.detach(), gen)
        loss, _ = objective(dec, disc, enc, x, p, y, data.binary, cfg, gen)
    grads = torch.autograd.grad(loss, [*enc.parameters(), *dec.parameters()])
    return loss.item(), torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("dataset", ["binary_mnist", "mnist"])
def test_a_bf16_step_is_close_to_fp32(data_dir, dataset):
    data = load(dataset, str(data_dir), "cpu", 200)
    loss32, g32 = one_step(Config(dataset=dataset, method="iabf", precision="fp32"), data)
    loss16, g16 = one_step(Config(dataset=dataset, method="iabf", precision="bf16"), data)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per product, float32 accumulation): through
    # three layers the loss moves by well under 1%, and the gradient keeps its direction
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98
    assert (g16 - g32).norm() / g32.norm() < 0.2


def test_under_bf16_the_terms_that_need_float32_stay_float32():
    torch.manual_seed(0)
    enc, dec, disc = build("mnist", (1, 28, 28), 100)
    x = torch.rand(8, 1, 28, 28)
    cfg = Config(method="iabf", precision="bf16")
    with precision.autocast("bf16", CPU):
        logits = enc(x)
        assert logits.dtype == torch.bfloat16                    # autocast is on: the matmuls run in bf16
        p = torch.sigmoid(logits.float())
        codes, log_q = sample_noisy(p, 0.1, "bsc", 5)
        assert dec(codes).dtype == torch.bfloat16
        log_lik = log_likelihood(dec(codes), x, binary=True)   # Binary MNIST's BCE
        assert log_lik.dtype == log_q.dtype == torch.float32
        assert log_likelihood(dec(codes), x, binary=False).dtype == torch.float32
        assert vimco(log_lik, log_q).dtype == torch.float32     # eq. 31: log-sum-exp, leave-one-out baseline
        y = bernoulli(p.detach())
        assert bernoulli_log_prob(y, p.to(torch.bfloat16)).dtype == torch.float32
        assert tc_estimate(disc, y).dtype == torch.float32      # eq. 14
        assert discriminator_loss(disc, y).dtype == torch.float32
        assert adversary(dec, x, y, True, cfg).dtype == torch.float32   # eq. 23's gradient w.r.t. the bits
        loss, _ = objective(dec, disc, enc, x, p, y, True, cfg)
        assert loss.dtype == torch.float32
    assert all(w.dtype == torch.float32 for w in enc.parameters())


def test_stacked_seeds_and_evaluation_run_under_bf16():
    metrics, states = run(Config(dataset="digits", method="iabf", epochs=1, max_train_examples=200, stack=2,
                                 precision="bf16"))
    assert all(math.isfinite(metrics[f"seed{s}/test/distortion"]) for s in (0, 1))
    assert all(w.dtype == torch.float32 for w in states[0]["model"]["encoder"].values())


def test_tf32_is_refused_off_cuda_and_bf16_without_kernels_warns():
    with pytest.raises(ConfigError, match="tf32.*CUDA"):
        precision.check("tf32", CPU)
    with pytest.warns(UserWarning, match="without bf16 kernels"):
        precision.check("bf16", CPU, bf16_kernels=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.check("bf16", CPU, bf16_kernels=True)
        precision.check("fp32", CPU, bf16_kernels=False)
        precision.check("fp32", CPU)
    with pytest.raises(ConfigError, match="precision='fp16' is not allowed: one of fp32, bf16, tf32"):
        Config(precision="fp16")


def test_precision_is_a_cell_of_a_study_like_any_parameter():
    study = validate({"study": "p", "dataset": "digits", "cells": ["precision"], "fixed": {"epochs": 1},
                      "search": {"precision": {"grid": ["fp32", "bf16"]}}, "variants": [{"method": "necst"}]}, "p.yaml")
    cells = [(g.cell, g.base.get("precision")) for g in groups(study)]
    assert sorted(c["precision"] for c, _ in cells) == ["bf16", "fp32"]
