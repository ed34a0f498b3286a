"""The command line as a newcomer meets it: label indices, labels as transfer sources, animate
outputs, one overwrite policy for files and folders, and the files a batch export writes."""

from pathlib import Path

import numpy as np
import pytest

from facemodel.blendshapes import write_weights_csv
from facemodel.cli import main
from facemodel.geometry.mesh_io import load_mesh


def test_sample_takes_a_label_index_like_its_name(random_model, random_model_dir, tmp_path):
    m = ["--model", str(random_model_dir), "--seed", "3"]
    index = random_model.label_names["expression"].index("happiness")
    assert main(["sample", *m, "--expression", str(index), "--out", str(tmp_path / "i.obj")]) == 0
    assert main(["sample", *m, "--expression", "happiness", "--out", str(tmp_path / "n.obj")]) == 0
    np.testing.assert_array_equal(load_mesh(tmp_path / "i.obj").vertices, load_mesh(tmp_path / "n.obj").vertices)


def test_sample_rejects_an_index_out_of_range(random_model_dir, tmp_path, capsys):
    assert main(["sample", "--model", str(random_model_dir), "--expression", "99", "--out", str(tmp_path / "x.obj")]) == 2
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "x.obj").exists()


def test_transfer_takes_a_label_as_source(random_model, random_model_dir, tmp_path, capsys):
    assert main(["transfer", "--model", str(random_model_dir), "--source", "happiness", "--target", "seed:3",
                 "--out", str(tmp_path / "t.obj")]) == 0  # fmt: skip
    expected = random_model.transfer_expression(random_model.sample(1, seed=0, expression="happiness"),
                                                random_model.sample(1, seed=3))  # fmt: skip
    np.testing.assert_allclose(load_mesh(tmp_path / "t.obj").vertices, expected.numpy()[0], atol=1e-4)
    # neither a file nor a label: the error names both
    assert main(["transfer", "--model", str(random_model_dir), "--source", "hapiness", "--target", "seed:3"]) == 2
    err = capsys.readouterr().err
    assert "neither a mesh file nor an expression label" in err and "did you mean 'happiness'" in err


def test_existing_mesh_and_png_are_kept_without_overwrite(random_model_dir, tmp_path, capsys):
    argv = ["sample", "--model", str(random_model_dir), "-n", "2", "--seed", "0", "--out", str(tmp_path / "f.obj"),
            "--png", str(tmp_path / "f.png"), "--size", "64"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "f_000.obj"), str(tmp_path / "f_001.obj"), str(tmp_path / "f.png")]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(argv[:-4] + ["--seed", "1", "--out", str(tmp_path / "f.obj"), "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "f_000.obj" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert main(argv + ["--overwrite"]) == 0
    assert main(["render", str(tmp_path / "f_000.obj"), "--png", str(tmp_path / "f.png"), "--size", "64"]) == 2
    assert main(["render", str(tmp_path / "f_000.obj"), "--png", str(tmp_path / "f.png"), "--size", "64",
                 "--overwrite"]) == 0  # fmt: skip


def test_batch_export_returns_and_names_every_file(random_model, tmp_path):
    faces = random_model.sample(3, seed=0)
    expected = [tmp_path / f"faces_{i:03d}.obj" for i in range(3)]
    assert faces.export_paths(tmp_path / "faces.obj") == expected
    assert faces.export(tmp_path / "faces.obj") == expected
    assert sorted(tmp_path.iterdir()) == expected  # no faces.obj itself
    assert faces.export(tmp_path / "scene.glb") == [tmp_path / "scene.glb"]  # GLB: one scene
    assert faces[0].export(tmp_path / "one.ply") == [tmp_path / "one.ply"]


@pytest.fixture()
def take(tmp_path) -> Path:
    write_weights_csv(tmp_path / "w.csv", {"jawOpen": [0.0, 0.5]})
    return tmp_path / "w.csv"


@pytest.mark.parametrize("out", ["t.mp4", "t.gif", "frames.v2"])
def test_animate_refuses_outputs_it_cannot_write(take, tmp_path, capsys, out):
    assert main(["animate", "--identity", "3", "--weights", str(take), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert ".glb" in err and "folder" in err
    assert not (tmp_path / out).exists()


def test_animate_keeps_an_existing_glb_without_overwrite(take, tmp_path, capsys):
    out = tmp_path / "take.glb"
    out.write_bytes(b"mine")
    argv = ["animate", "--identity", "3", "--weights", str(take), "--out", str(out)]
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main(argv + ["--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"glTF"
