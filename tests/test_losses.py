import math

import pytest
import torch

from facemodel.networks import Factor, GeneratorConfig
from facemodel.training.codes import LabelCodes, sample_codes
from facemodel.training.losses import class_weights, classification_loss, feature_loss, gradient_penalty, laplacian_loss


def test_gradient_penalty_of_linear_critic_is_analytic():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 8)
    critic = lambda x: (x * w).flatten(1).sum(1)  # gradient is w everywhere
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    expected = (w.norm() - 1) ** 2
    torch.testing.assert_close(gradient_penalty(critic, real, fake), expected)
    unit = w / w.norm()
    assert gradient_penalty(lambda x: (x * unit).flatten(1).sum(1), real, fake).item() < 1e-10


def test_gradient_penalty_is_differentiable_wrt_critic():
    lin = torch.nn.Linear(4, 1)
    gp = gradient_penalty(lambda x: lin(x).squeeze(1), torch.randn(6, 4), torch.randn(6, 4))
    gp.backward()
    assert lin.weight.grad.abs().sum() > 0


def test_class_weights_unbalanced():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1 + [-1] * 10)
    w = class_weights(labels, 4)
    # w_c = N / (K n_c) with N = 10 labelled, K = 3 present classes; absent class 3 -> 0
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 10 / 3, 0.0]))
    assert torch.allclose((w[labels[labels >= 0]]).sum(), torch.tensor(10.0))  # total weight preserved
    torch.testing.assert_close(class_weights(torch.tensor([0, 1, 0, 1]), 2), torch.ones(2))


def test_classification_ignores_unlabelled():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([-1, 2, -1, 0])
    expected = torch.nn.functional.cross_entropy(logits[[1, 3]], labels[[1, 3]])
    torch.testing.assert_close(classification_loss(logits, labels), expected)
    zero = classification_loss(logits, torch.full((4,), -1))
    assert zero.item() == 0.0
    zero.backward()  # still differentiable, gradient zero
    assert logits.grad.abs().sum() == 0


def test_feature_loss_bounds():
    f = torch.randn(8, 2048)
    assert feature_loss(f, f).abs().item() < 1e-6
    assert math.isclose(feature_loss(f, -f).item(), 2.0, rel_tol=1e-6)
    assert math.isclose(feature_loss(f, torch.zeros_like(f)).item(), 1.0)  # eps-guarded, no NaN


def test_laplacian_loss_zero_for_translation(template):
    L = template.laplacian()
    d = torch.ones(2, 9409, 3) * torch.tensor([1.0, -2.0, 3.0])
    assert laplacian_loss(L, d).item() < 1e-8
    rough = torch.randn(2, 9409, 3)
    assert laplacian_loss(L, rough).item() > 1.0
    assert math.isclose(laplacian_loss(L, rough, scale=10.0).item(), laplacian_loss(L, rough).item() / 100, rel_tol=1e-5)


@pytest.mark.parametrize("names", [("identity", "expression"), ("identity", "expression", "viseme")])
def test_alternation_fractions(names):
    factors = tuple(Factor(name=n, code_dim=4 + i, num_labels=3 + i) for i, n in enumerate(names))
    cfg = GeneratorConfig(num_vertices=5, factors=factors, noise_dim=2)
    codes = LabelCodes(cfg, seed=0)
    slices = cfg.code_slices()
    counts = {n: 0 for n in names}
    for step in range(6 * len(names)):
        b = sample_codes(step, 8, cfg, codes)
        counts[b.labelled] += 1
        lab = b.labels[b.labelled]
        assert (lab >= 0).all()  # every row of the labelled factor uses a label code
        torch.testing.assert_close(b.z[:, slices[b.labelled]], codes.codes(b.labelled)[lab])
        for other in names:
            if other == b.labelled:
                continue
            assert (b.labels[other] == -1).all()
            zo = b.z[:, slices[other]]
            torch.testing.assert_close(zo[b.pairs[:, 0]], zo[b.pairs[:, 1]])  # pairs share the code
            assert not torch.equal(zo[0], zo[2])  # different pairs differ
        zn = b.z[:, slices["noise"]]
        assert not torch.equal(zn[b.pairs[:, 0]], zn[b.pairs[:, 1]])  # noise differs within pairs
    # each factor is the labelled one in exactly 1/F of the steps (the paper: half and half)
    assert set(counts.values()) == {6}


def test_only_identity_classified():
    cfg = GeneratorConfig(num_vertices=5, factors=(Factor(name="identity", code_dim=3, num_labels=4),
                                                   Factor(name="expression", code_dim=2, num_labels=7)))  # fmt: skip
    codes = LabelCodes(cfg, seed=0)
    assert {sample_codes(s, 4, cfg, codes, classified=("identity",)).labelled for s in range(4)} == {"identity"}
    assert sample_codes(0, 4, cfg, codes, classified=()).labelled is None
    with pytest.raises(ValueError, match="even"):
        sample_codes(0, 5, cfg, codes)
