"""The architectures: CIFAR-10's fast convolutions compute the same function as the plain layers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iabf import train as T
from iabf.config import Config
from iabf.data import load
from iabf.models import UpConv2d, build

# float32 sums in a different order: differences of a few ulps of the largest term (values ~1)
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c_in, c_out, bias", [(5, 3, True), (4, 7, False)])
def test_upconv_is_a_nearest_upsample_then_the_same_convolution(c_in, c_out, bias):
    torch.manual_seed(0)
    up = UpConv2d(c_in, c_out, 3, padding=1, bias=bias)
    plain = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
    plain.load_state_dict(up.state_dict())
    x = torch.randn(2, c_in, 5, 6, requires_grad=True)
    a = up(x)
    b = plain(F.interpolate(x, scale_factor=2, mode="nearest"))
    assert a.shape == b.shape == (2, c_out, 10, 12)
    torch.testing.assert_close(a, b, **TOL)
    g = torch.randn_like(a)        # and the gradients, to the input and to the shared weights
    ga = torch.autograd.grad(a, [x, up.weight], g)
    gb = torch.autograd.grad(b, [x, plain.weight], g)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, **TOL)


def test_cifar_models_are_channels_last_with_the_plain_layers_parameter_names():
    enc, dec, _ = build("cifar10", (3, 32, 32), 500)
    kernels = [p for n, p in [*enc.named_parameters(), *dec.named_parameters()] if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    # the upsample's slot holds an Identity, so checkpoints keep the plain Sequential's indices
    names = [n for n, _ in dec.named_parameters()]
    assert names[-4:] == ["body.14.weight", "body.14.bias", "body.15.weight", "body.15.bias"]
    assert isinstance(dec.body[13], nn.Identity) and isinstance(dec.body[14], UpConv2d)
    assert dec(torch.rand(2, 3, 500).round()).shape == (2, 3, 3, 32, 32)


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_evaluation_numbers_do_not_depend_on_the_forward_chunk(dataset, data_dir):
    data = load(dataset, data_dir)
    torch.manual_seed(0)
    enc, dec, _ = build(dataset, data.image_shape, Config(dataset=dataset).bits)
    cfg = Config(dataset=dataset, eval_batch_size=64)
    images = data.val[:150]
    results = []
    for chunk in (7, 10_000):
        results.append(T.evaluate(enc, dec, images, data.binary, cfg, seed=5, chunk=chunk))
    # same channel noise (drawn per eval batch), the networks on smaller pieces: float rounding only
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert results[0][k] == pytest.approx(results[1][k], rel=1e-5, abs=1e-6), k


def test_validation_on_a_fixed_subset_is_the_first_images_every_epoch():
    data = load("digits", "unused")
    cfg = Config(dataset="digits", val_subset=50)
    a = T.validation_images(data, cfg, 1)
    assert torch.equal(a, data.val[:50]) and torch.equal(a, T.validation_images(data, cfg, 7))
    # one batch a epoch (the reference code's) is then drawn from the subset
    b = T.validation_images(data, Config(dataset="digits", val_subset=50, val_batch=20, seed=1), 3)
    assert len(b) == 20 and all(any(torch.equal(x, y) for y in data.val[:50]) for x in b)
