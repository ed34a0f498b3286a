import pytest
import torch

from facemodel.errors import FaceModelError
from facemodel.networks import Factor, Generator, GeneratorConfig
from facemodel.training.discriminator import Critic

FACTORS = (Factor(name="identity", code_dim=65, num_labels=240), Factor(name="expression", code_dim=15, num_labels=7))


@pytest.fixture(scope="module")
def critic(template):
    torch.manual_seed(0)
    return Critic(template.uv, template.faces, {"identity": 240, "expression": 7})


def test_generator_shapes_paper_sizes():
    g = Generator(GeneratorConfig(num_vertices=9409, factors=FACTORS))
    assert g.config.code_dim == 85
    assert [tuple(p.shape) for p in g.parameters()] == [(512, 85), (512,), (3 * 9409, 512), (3 * 9409,)]
    out = g(torch.randn(4, 85))
    assert out.shape == (4, 9409, 3)
    with pytest.raises(FaceModelError, match=r"\(B, 85\)"):
        g(torch.randn(4, 84))


def test_code_slices_and_validation():
    cfg = GeneratorConfig(num_vertices=10, factors=FACTORS)
    s = cfg.code_slices()
    assert (s["identity"], s["expression"], s["noise"]) == (slice(0, 65), slice(65, 80), slice(80, 85))
    with pytest.raises(ValueError, match="unique"):
        GeneratorConfig(num_vertices=10, factors=(FACTORS[0], FACTORS[0]))
    assert GeneratorConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_critic_shapes(critic, template):
    d = torch.randn(3, 9409, 3)
    out = critic(d, noise_std=0.1)
    assert out.score.shape == (3,)
    assert out.logits["identity"].shape == (3, 240) and out.logits["expression"].shape == (3, 7)
    assert out.features["identity"].shape == (3, 2048)  # the paper's 2048-d branch features
    assert critic.image(d).shape == (3, 3, 64, 64)


def test_gradients_reach_generator_through_mapping_and_critic(critic):
    g = Generator(GeneratorConfig(num_vertices=9409, factors=FACTORS))
    out = critic(g(torch.randn(2, 85)))
    (out.score.sum() + out.logits["expression"].sum()).backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in critic.named_parameters():
        if not name.startswith(("branches.identity", "heads.identity")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_resolution_must_divide(template):
    with pytest.raises(ValueError, match="multiple of 16"):
        Critic(template.uv, template.faces, {"identity": 2}, resolution=40)
