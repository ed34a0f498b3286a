"""Every example runs (with a small model instead of the released weights)."""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from facemodel.io_points import load_points

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_quickstart(random_model_dir, tmp_path, capsys):
    assert run_example("quickstart", ["--model", str(random_model_dir), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("sample_*.obj")) == [f"sample_{i:03d}.obj" for i in range(4)]
    assert (tmp_path / "fit.obj").is_file()
    img = np.asarray(Image.open(tmp_path / "quickstart.png"))
    assert img.std() > 10
    assert "landmark fit: rmse" in capsys.readouterr().out


def test_fit_landmarks_example(random_model_dir, random_model, tmp_path, capsys):
    assert run_example("fit_landmarks", ["--model", str(random_model_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3D fit: landmark rmse" in out and "2D fit" in out
    assert (tmp_path / "fit.png").is_file() and np.load(tmp_path / "codes.npy").shape == (1, 85)
    # and from a points file, as a user would
    pts = random_model.sample(1, seed=9).vertices[0, random_model.landmarks].numpy()
    (tmp_path / "p.pts").write_text("version: 1\nn_points: 68\n{\n" + "\n".join(" ".join(map(str, r)) for r in pts) + "\n}\n")
    np.testing.assert_allclose(load_points(tmp_path / "p.pts"), pts, rtol=1e-6)
    assert run_example("fit_landmarks", ["--model", str(random_model_dir), "--points", str(tmp_path / "p.pts"),
                                         "--out", str(tmp_path / "b")]) == 0  # fmt: skip


def test_transfer_example(random_model_dir, random_model, tmp_path):
    assert run_example("transfer_expression", ["--model", str(random_model_dir), "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("transferred_*.obj"))) == 3
    # with meshes from disk (encoded first)
    faces = random_model.sample(2, seed=3)
    src, tgt = faces[0].export(tmp_path / "src.obj")[0], faces[1].export(tmp_path / "tgt.obj")[0]
    assert run_example("transfer_expression", ["--model", str(random_model_dir), "--source", str(src),
                                               "--targets", str(tgt), "--out", str(tmp_path / "m")]) == 0  # fmt: skip
    assert (tmp_path / "m" / "transferred.obj").is_file()
