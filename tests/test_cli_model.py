import json

import numpy as np
import pytest

from facemodel.cli import main
from facemodel.geometry.mesh_io import load_mesh


def test_info(random_model_dir, capsys):
    assert main(["info", "--model", str(random_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "vertices 9409" in out and "expression  code  15, 7 labels: neutral, anger" in out


def test_sample_writes_meshes_and_png(random_model_dir, tmp_path, capsys):
    assert main(["sample", "--model", str(random_model_dir), "-n", "2", "--seed", "1", "--expression", "happiness",
                 "--out", str(tmp_path / "f.ply"), "--png", str(tmp_path / "f.png"), "--side"]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f_000.ply", "f_001.ply"]
    assert load_mesh(tmp_path / "f_000.ply").vertices.shape == (9409, 3)
    assert main(["sample", "--model", str(random_model_dir), "--expression", "hapy"]) == 2
    assert "did you mean 'happiness'" in capsys.readouterr().err
    # a model without a blendshape map has no realistic expression prior: a clear error, no file
    assert main(["sample", "--model", str(random_model_dir), "--expression-prior", "blendshapes",
                 "--out", str(tmp_path / "g.ply")]) == 2  # fmt: skip
    assert "blendshape map" in capsys.readouterr().err and not (tmp_path / "g.ply").exists()


def test_sample_expression_prior_of_the_released_model(tmp_path):
    from facemodel import FaceModel

    m = FaceModel.from_pretrained()
    for prior in ("auto", "gaussian"):
        assert main(["sample", "--seed", "3", "--expression-prior", prior, "--out", str(tmp_path / f"{prior}.obj")]) == 0
    auto, gauss = (load_mesh(tmp_path / f"{p}.obj").vertices for p in ("auto", "gaussian"))
    np.testing.assert_allclose(auto, m.sample(seed=3).vertices[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(gauss, m.sample(seed=3, expression_prior="gaussian").vertices[0].numpy(), atol=1e-3)
    assert np.abs(auto - gauss).max() > 0.5


def test_transfer_add_encode_fit_render(random_model, random_model_dir, tmp_path, capsys):
    m = ["--model", str(random_model_dir)]
    faces = random_model.sample(2, seed=4)
    src, tgt = [faces[i].export(tmp_path / f"in{i}.obj")[0] for i in range(2)]
    assert main(["transfer", *m, "--source", str(src), "--target", str(tgt), "seed:3", "--out", str(tmp_path / "t.obj")]) == 0
    assert {"t_000.obj", "t_001.obj"} <= {p.name for p in tmp_path.iterdir()}
    assert main(["add", *m, "--target", "seed:1", "--expression", "happiness", str(src), "--weights", "0.5", "1",
                 "--out", str(tmp_path / "a.glb")]) == 0  # fmt: skip
    assert (tmp_path / "a.glb").stat().st_size > 1000
    assert main(["encode", *m, str(tgt), "--codes", str(tmp_path / "c.npy")]) == 0
    codes = np.load(tmp_path / "c.npy")
    assert codes.shape == (1, 85)
    np.testing.assert_allclose(codes, faces.codes[1:].numpy(), atol=0.05)  # the generating codes come back
    pts = faces.vertices[0, random_model.landmarks].numpy() * 0.01  # centimetres-like, any scale works
    np.save(tmp_path / "lm.npy", pts)
    (tmp_path / "lm.json").write_text(json.dumps({"points": pts[:, :2].tolist()}))
    capsys.readouterr()
    assert main(["fit", *m, str(tmp_path / "lm.npy"), "--out", str(tmp_path / "fit.obj")]) == 0
    out = capsys.readouterr().out
    assert "rmse" in out and "plausibility" in out and "prior weight" in out and (tmp_path / "fit.obj").is_file()
    assert "landmark noise" in out and "(estimated)" in out  # the default estimates the points' noise
    assert main(["fit", *m, str(tmp_path / "lm.npy"), "--noise-mm", "auto", "--out", str(tmp_path / "fita.obj")]) == 0
    assert "(estimated)" in capsys.readouterr().out
    assert (tmp_path / "fita.obj").read_bytes() == (tmp_path / "fit.obj").read_bytes()  # what the default does
    assert main(["fit", *m, str(tmp_path / "lm.npy"), "--noise-mm", "0.2", "--out", str(tmp_path / "fit02.obj")]) == 0
    assert (tmp_path / "fit02.obj").read_bytes() != (tmp_path / "fit.obj").read_bytes()  # another prior weight
    assert main(["fit", *m, str(tmp_path / "lm.json"), "--png", str(tmp_path / "fit2d.png")]) == 0
    before = (tmp_path / "fit.obj").read_bytes()
    import facemodel.model as model_module

    with pytest.MonkeyPatch.context() as mp:  # an existing output is refused before the model loads or fits
        mp.setattr(model_module.FaceModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded")))
        for extra in (["--out", str(tmp_path / "fit.obj")], ["--png", str(tmp_path / "fit2d.png")]):
            assert main(["fit", *m, str(tmp_path / "lm.npy"), *extra]) == 2
            assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "fit.obj").read_bytes() == before
    assert main(["fit", *m, str(tmp_path / "lm.npy"), "--out", str(tmp_path / "fit.obj"), "--overwrite"]) == 0
    assert main(["render", str(src), str(tgt), "--png", str(tmp_path / "r.png"), "--labels"]) == 0
    assert (tmp_path / "r.png").is_file()


def test_model_errors_are_clear(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert "save_pretrained" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("1 2 3")
    assert main(["fit", "--model", str(tmp_path), str(tmp_path / "p.txt")]) == 2
