"""Decode's float16 output layer (issue 21): within 0.01 mm of the float32 decode, the default
decode unchanged to the bit, training and ``model(z)`` untouched, bad arguments refused.
No timing here (benchmarks/bench_decode.py measures it)."""

from __future__ import annotations

import copy

import pytest
import torch

from facemodel import FaceModel
from facemodel.errors import ArgumentTypeError, FaceModelError, InvalidArgumentError

BUDGET_MM = 0.01

pytestmark = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="the float16 output layer needs FBGEMM (x86)"
)


@pytest.fixture(scope="module")
def models():
    return FaceModel.from_pretrained(), FaceModel.from_pretrained(inference_dtype=torch.float16)


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).norm(dim=-1)


def test_float16_decode_is_within_a_hundredth_of_a_millimetre(models):
    full, half = models
    assert full.inference_dtype is None and half.inference_dtype == torch.float16
    z = torch.randn(1000, full.config.generator.code_dim, generator=torch.Generator().manual_seed(21))
    d = torch.cat([_distance(half.decode(z[i : i + 250]).vertices, full.decode(z[i : i + 250]).vertices)
                   for i in range(0, len(z), 250)])  # fmt: skip
    assert float(d.max()) <= BUDGET_MM
    assert 0 < float(d.pow(2).mean().sqrt()) < BUDGET_MM / 5  # it is the copy, and it is close everywhere
    one = half.decode(z[0])  # (D,) and single codes take the same path
    assert one.vertices.dtype == torch.float32 and one.vertices.shape == (1, full.num_vertices, 3)
    assert float(_distance(one.vertices, full.decode(z[:1]).vertices).max()) <= BUDGET_MM


def test_the_paths_through_decode_use_it_and_model_z_stays_float32(models):
    full, half = models
    a, b = full.sample(3, seed=4, expression="happiness"), half.sample(3, seed=4, expression="happiness")
    assert torch.equal(a.codes, b.codes) and float(_distance(a.vertices, b.vertices).max()) <= BUDGET_MM
    assert not torch.equal(a.vertices, b.vertices)
    z = a.codes
    with torch.no_grad():
        assert torch.equal(half(z), full(z))  # forward never uses the copy
    assert torch.equal(half.state_dict()["generator.fc2.weight"], full.state_dict()["generator.fc2.weight"])


def test_default_decode_is_bit_identical_to_template_plus_generator(models):
    full, _ = models
    z = torch.randn(5, full.config.generator.code_dim, generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():
        want = (full.template + full.generator(z)).detach()
    assert torch.equal(full.decode(z).vertices, want)
    with torch.no_grad():
        assert torch.equal(full(z), want)
    assert torch.equal(full.decode(z.numpy()).vertices, want)  # arrays go through the slow branch
    assert torch.equal(full.decode(z.double()).vertices, full.decode(z.double().float()).vertices)


def test_gradients_use_the_float32_weights():
    model = FaceModel.from_pretrained(inference_dtype=torch.float16)
    z = torch.randn(2, model.config.generator.code_dim, requires_grad=True)
    v = model(z)
    v.sum().backward()
    assert z.grad is not None and model.generator.fc2.weight.grad is not None
    with torch.enable_grad():
        want = FaceModel.from_pretrained()(z.detach())
    assert torch.equal(v.detach(), want.detach())


def test_the_copy_follows_weight_and_template_changes():
    model = FaceModel.from_pretrained(inference_dtype=torch.float16)
    z = torch.zeros(1, model.config.generator.code_dim)
    before = model.decode(z).vertices
    with torch.no_grad():
        model.template += 1.0
    assert torch.allclose(model.decode(z).vertices, before + 1.0, atol=1e-4)
    with torch.no_grad():
        model.generator.fc2.bias += 0.1  # output units: scale mm each
    moved = model.decode(z).vertices - before - 1.0
    assert torch.allclose(moved, torch.full_like(moved, 0.1 * model.generator.scale), atol=1e-3)
    c = copy.deepcopy(model)
    assert torch.equal(c.decode(z).vertices, model.decode(z).vertices)
    assert model.set_inference_dtype(None) is model and model.inference_dtype is None
    with torch.enable_grad():
        assert torch.equal(model.decode(z).vertices, (model.template + model.generator(z)).detach())


def test_moving_the_model_falls_back_to_its_own_precision():
    model = FaceModel.from_pretrained(inference_dtype=torch.float16).to(dtype=torch.float64)
    z = torch.randn(2, model.config.generator.code_dim, dtype=torch.float64)
    with torch.enable_grad():
        want = (model.template + model.generator(z)).detach()
    assert model.decode(z).vertices.dtype == torch.float64 and torch.equal(model.decode(z).vertices, want)
    with pytest.raises(InvalidArgumentError, match="float32 model on the CPU"):
        model.set_inference_dtype(torch.float16)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.bfloat16, InvalidArgumentError, "0.033 mm"),
        (torch.float64, InvalidArgumentError, "float16"),
        (torch.int8, InvalidArgumentError, "float16"),
        ("float16", ArgumentTypeError, "torch.dtype"),
        (16, ArgumentTypeError, "torch.dtype"),
    ],
)
def test_bad_inference_dtype_raises_the_package_error(models, bad, error, match):
    full, _ = models
    with pytest.raises(error, match=match) as info:
        full.set_inference_dtype(bad)
    assert isinstance(info.value, FaceModelError)
    assert full.inference_dtype is None  # unchanged
    with pytest.raises(error, match=match):
        FaceModel.from_pretrained(inference_dtype=bad)


def test_float32_means_the_default():
    model = FaceModel.from_pretrained(inference_dtype=torch.float32)
    assert model.inference_dtype is None
