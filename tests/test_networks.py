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


def _shared_expression_motion(g, z_a, exp_slice):
    """Displacement change when two faces (rows of z_a) switch to the same new expression."""
    z_b = z_a.clone()
    z_b[:, exp_slice] = torch.randn(z_a.shape[1])[exp_slice]
    with torch.no_grad():
        d = g(z_b) - g(z_a)
    return (d[0] - d[1]).abs().max().item(), d.abs().max().item()


@pytest.mark.parametrize("widths,additive", [((384, 128), True), ((320, 128), False), (None, False)])
def test_factorised_first_layer_separates_the_factors(widths, additive):
    torch.manual_seed(0)
    cfg = GeneratorConfig(num_vertices=50, factors=FACTORS, factor_hidden=widths)
    g = Generator(cfg)
    assert cfg.interaction_hidden == (512 - sum(widths) if widths else 512)
    s = cfg.code_slices()
    z = torch.randn(2, 85)
    z[1, s["expression"]] = z[0, s["expression"]]  # two identities, one expression
    spread, motion = _shared_expression_motion(g, z, s["expression"])
    assert motion > 0.05
    # with no interaction units an expression moves every identity alike; otherwise it may not
    assert (spread < 1e-5 * motion) == additive
    if widths is not None:
        mask = g.fc1_mask
        assert mask.shape == (512, 85) and mask[:384 if additive else 320, s["expression"]].sum() == 0
        assert mask[:widths[0], s["noise"]].all() and mask[widths[0] : sum(widths), s["noise"]].sum() == 0
        assert (g.fc1.weight.detach() * (1 - mask)).abs().max() == 0


def test_factorised_layer_keeps_its_zeros_through_training_and_loading():
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(num_vertices=50, factors=FACTORS, factor_hidden=(384, 128)))
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    for _ in range(5):
        loss = g(torch.randn(8, 85)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    off = 1 - g.fc1_mask
    assert (g.fc1.weight.detach() * off).abs().max() == 0
    assert (g.fc1.weight.detach() * g.fc1_mask).abs().sum() > 0
    # weights saved by something that ignored the structure are re-masked on load
    state = {k: v.clone() for k, v in g.state_dict().items()}
    assert "fc1_mask" not in state  # not persistent: the config rebuilds it
    state["fc1.weight"] += 1.0
    h = Generator(g.config)
    h.load_state_dict(state)
    assert (h.fc1.weight.detach() * off).abs().max() == 0


def test_factor_hidden_validation():
    with pytest.raises(ValueError, match="one width per factor"):
        GeneratorConfig(num_vertices=10, factors=FACTORS, factor_hidden=(384,))
    with pytest.raises(ValueError, match="sums to 640 > hidden 512"):
        GeneratorConfig(num_vertices=10, factors=FACTORS, factor_hidden=(512, 128))
    with pytest.raises(ValueError, match=">= 1"):
        GeneratorConfig(num_vertices=10, factors=FACTORS, factor_hidden=(512, 0))
    cfg = GeneratorConfig(num_vertices=10, factors=FACTORS, factor_hidden=(384, 128))
    assert GeneratorConfig.model_validate_json(cfg.model_dump_json()) == cfg
