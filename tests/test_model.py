import threading

import numpy as np
import pytest
import torch

from facemodel.errors import FaceModelError, InvalidGeometryError, TopologyMismatchError
from facemodel.model import FaceModel, UnknownLabelError
from facemodel.outputs import Faces

EXPRESSIONS = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]


@pytest.fixture(scope="module")
def model(random_model):
    return random_model


def test_sample_shapes_and_reproducibility(model):
    a = model.sample(3, seed=7)
    assert isinstance(a, Faces) and len(a) == 3
    assert a.vertices.shape == (3, 9409, 3) and a.codes.shape == (3, 85) and a.faces.shape == (18460, 3)
    b = model.sample(3, seed=7)
    assert torch.equal(a.vertices, b.vertices)
    assert not torch.equal(a.vertices, model.sample(3, seed=8).vertices)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(model.sample(3, generator=g).codes, a.codes)


def test_labels_names_indices_and_codes(model):
    happy = model.sample(2, seed=0, expression="happiness")
    code = model.label_codes("expression")[4]
    assert torch.equal(happy.expression, code.expand(2, -1))
    assert torch.equal(model.sample(2, seed=0, expression=4).codes, happy.codes)
    assert torch.equal(model.sample(1, seed=0, expression="Happiness").expression[0], code)
    mixed = model.sample(2, seed=0, expression=["neutral", "surprise"])
    assert torch.equal(mixed.expression[1], model.label_codes("expression")[6])
    ident = torch.randn(65)
    assert torch.equal(model.sample(2, identity=ident).identity, ident.expand(2, -1))
    with pytest.raises(UnknownLabelError, match="did you mean 'happiness'"):
        model.sample(1, expression="hapiness")
    with pytest.raises(UnknownLabelError, match="out of range"):
        model.sample(1, expression=9)
    with pytest.raises(FaceModelError, match=r"\(15,\) or \(n, 15\)"):
        model.sample(1, expression=torch.randn(14))
    with pytest.raises(FaceModelError, match="NaN"):
        model.sample(1, identity=torch.full((65,), float("nan")))
    with pytest.raises(FaceModelError, match="unknown factors"):
        model.sample(1, viseme="aa")
    with pytest.raises(FaceModelError, match="positive integer"):
        model.sample(0)


def test_truncation_shrinks_codes(model):
    full = model.sample(64, seed=1)
    trunc = model.sample(64, seed=1, truncation=0.5)
    torch.testing.assert_close(trunc.identity, 0.5 * full.identity)
    with pytest.raises(FaceModelError, match="truncation"):
        model.sample(1, truncation=2.0)


def test_faces_container(model, tmp_path):
    f = model.sample(4, seed=3)
    assert len(f[1:3]) == 2 and len(f[0]) == 1 and len(list(f)) == 4
    assert f.numpy().shape == (4, 9409, 3) and f.numpy().dtype == np.float32
    mesh = f[0].to_trimesh()
    assert mesh.vertices.shape == (9409, 3)  # not merged or reordered
    paths = f.export(tmp_path / "face.obj")
    assert [p.name for p in paths] == [f"face_{i:03d}.obj" for i in range(4)]
    assert f[0].export(tmp_path / "one.ply")[0].is_file()
    assert f.export(tmp_path / "all.glb")[0].stat().st_size > 1000
    with pytest.raises(IndexError):
        f[4]


def test_transfer_add_neutralize(model):
    src = model.sample(1, seed=1, expression="surprise")
    tgt = model.sample(3, seed=2)
    out = model.transfer_expression(src, tgt)
    assert len(out) == 3
    torch.testing.assert_close(out.identity, tgt.identity)
    torch.testing.assert_close(out.noise, tgt.noise)
    torch.testing.assert_close(out.expression, src.expression.expand(3, -1))
    added = model.add_expressions(tgt, "happiness", src, weights=[0.5, 1.0])
    expected = tgt.expression + 0.5 * model.label_codes("expression")[4] + src.expression
    torch.testing.assert_close(added.expression, expected)
    neutral = model.neutralize(tgt)
    torch.testing.assert_close(neutral.expression, model.label_codes("expression")[0].expand(3, -1))
    with pytest.raises(FaceModelError, match="at least one"):
        model.add_expressions(tgt)
    with pytest.raises(FaceModelError, match="weights"):
        model.add_expressions(tgt, "anger", weights=[1, 2])


def test_two_threads_with_own_generators_match_one_thread(model):
    expected = [model.sample(8, seed=s).vertices for s in (11, 12)]
    results = {}

    def work(s):
        results[s] = model.sample(8, generator=torch.Generator().manual_seed(s)).vertices

    threads = [threading.Thread(target=work, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results[11], expected[0]) and torch.equal(results[12], expected[1])


def test_mesh_inputs_are_validated(model, template):
    with pytest.raises(TopologyMismatchError, match="9409"):
        model._as_vertices(np.zeros((100, 3)))
    bad = template.vertices.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidGeometryError, match="NaN or infinite"):
        model._as_vertices(bad)
    assert model._as_vertices([template.vertices, template.vertices]).shape == (2, 9409, 3)


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = FaceModel.from_pretrained(tmp_path / "m")
    a = model.sample(2, seed=5, expression="fear")
    b = again.sample(2, seed=5, expression="fear")
    torch.testing.assert_close(a.vertices, b.vertices, rtol=0, atol=0)
    assert again.label_names["expression"] == EXPRESSIONS


def test_corrupt_or_mismatched_weights(model, tmp_path):
    from facemodel.model import WeightsFormatError

    folder = model.save_pretrained(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(WeightsFormatError, match="re-download"):
        FaceModel.from_pretrained(folder)
    model.save_pretrained(folder)
    cfg = (folder / "config.json").read_text()
    (folder / "config.json").write_text(cfg.replace('"hidden": 512', '"hidden": 256'))
    with pytest.raises(WeightsFormatError, match="does not match its config"):
        FaceModel.from_pretrained(folder)
    (folder / "config.json").write_text(cfg.replace('"format_version": 1', '"format_version": 7'))
    with pytest.raises(WeightsFormatError, match="upgrade"):
        FaceModel.from_pretrained(folder)


def test_sdk_does_not_import_training():
    import subprocess
    import sys

    code = ("import sys, facemodel, facemodel.fitting, facemodel.hub, facemodel.landmarks; "
            "print(sorted(m for m in sys.modules if m.startswith('facemodel.training')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_from_pretrained_stays_off_torch_compile_stack():
    """The size check before loading builds the model on the meta device; a reduction there once
    imported ``torch._dynamo`` (1.4 of a cold ``from_pretrained``'s 1.5 s). The released weights
    have a factorised first layer, the path that did it."""
    import subprocess
    import sys

    code = ("import sys; from facemodel import FaceModel; m = FaceModel.from_pretrained(); "
            "assert m.generator.fc1_mask is not None; "
            "print(sorted(k for k in sys.modules if k.startswith('torch._dynamo')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_expression_prior_choices_and_a_model_without_a_map(model):
    from facemodel.errors import InvalidArgumentError
    from facemodel.model import NoExpressionMapError

    assert model.expression_map is None
    # "auto" on a model without a blendshape map: N(0, I) codes, as before the option existed
    assert torch.equal(model.sample(3, seed=2).codes, model.sample(3, seed=2, expression_prior="gaussian").codes)
    with pytest.raises(NoExpressionMapError, match="blendshape map"):
        model.sample(2, expression_prior="blendshapes")
    with pytest.raises(InvalidArgumentError, match="expression_prior"):
        model.sample(2, expression_prior="realistic")
    # given expressions ignore the prior
    assert torch.equal(model.sample(2, seed=2, expression="happiness", expression_prior="blendshapes").codes,
                       model.sample(2, seed=2, expression="happiness").codes)
