"""``facemodel animate`` and examples/animate_from_arkit.py: weights files -> frames."""

import copy
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from facemodel.blendshapes import write_weights_csv
from facemodel.cli import main
from facemodel.expression_map import ExpressionMap, ExpressionMapConfig
from facemodel.geometry.mesh_io import load_mesh

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def mapped(random_model, tmp_path_factory):
    """The random model with an untrained (seeded) blendshape map, saved."""
    torch.manual_seed(0)
    model = copy.deepcopy(random_model)
    emap = ExpressionMap(ExpressionMapConfig(code_dim=15, to_code="mlp", to_weights="mlp"))
    with torch.no_grad():
        emap.code_linear.weight.mul_(20)  # codes that move the face visibly
    model.set_expression_map(emap)
    return model, model.save_pretrained(tmp_path_factory.mktemp("mapped") / "model")


def _take(n: int = 5) -> dict:
    t = np.linspace(0, 1, n, dtype=np.float32)
    return {"jawOpen": t, "eyeBlinkLeft": 1 - t, "mouthSmileRight": np.full(n, 0.3, np.float32)}


def _expected(model, take, seed=3):
    return model.transfer_expression(take, model.sample(1, seed=seed)).numpy()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_livelink_csv_to_obj_sequence(mapped, tmp_path, capsys):
    model, model_dir = mapped
    csv_path = write_weights_csv(tmp_path / "take.csv", _take(), spelling="livelink")
    assert csv_path.read_text().startswith("Timecode,BlendShapeCount,")
    out = tmp_path / "frames"
    assert main(["animate", "--model", str(model_dir), "--identity", "3", "--weights", str(csv_path), "--out", str(out)]) == 0
    files = sorted(out.glob("*.obj"))
    assert [f.name for f in files] == [f"frame_{i:05d}.obj" for i in range(5)]
    expected = _expected(model, _take())
    for i, f in enumerate(files):
        mesh = load_mesh(f)
        np.testing.assert_allclose(mesh.vertices, expected[i], atol=2e-5)
        assert np.array_equal(mesh.faces, model.faces.numpy())
    assert np.abs(expected[4] - expected[0]).max() > 0.1  # the frames differ
    assert "5 frames" in capsys.readouterr().out


def test_fallback_shapes_move_the_frames(mapped, tmp_path):
    """A map with fallback shapes: animate adds their linear deltas, as transfer_expression does."""
    model, _ = mapped
    model = copy.deepcopy(model)
    delta = torch.zeros(model.num_vertices, 3)
    delta[:, 0] = 2.0  # 2 mm to the side at weight 1
    model.set_expression_map(model.expression_map.with_fallback({"jawLeft": delta}))
    model_dir = model.save_pretrained(tmp_path / "fb")
    take = {**_take(3), "jawLeft": np.array([0.0, 0.5, 1.0], np.float32)}
    csv_path = write_weights_csv(tmp_path / "take.csv", take, spelling="arkit")
    out = tmp_path / "frames"
    assert main(["animate", "--model", str(model_dir), "--identity", "3", "--weights", str(csv_path), "--out", str(out),
                 "--format", "ply", "--quiet"]) == 0  # fmt: skip
    expected = _expected(model, take)
    without = _expected(model, {**take, "jawLeft": np.zeros(3, np.float32)})
    for i in range(3):
        v = trimesh.load(out / f"frame_{i:05d}.ply", process=False).vertices
        np.testing.assert_allclose(v, expected[i], atol=2e-5)
        np.testing.assert_allclose(v[:, 0] - without[i][:, 0], 2.0 * take["jawLeft"][i], atol=2e-4)


def test_plain_json_to_ply_sequence_and_seed_prefix(mapped, tmp_path):
    model, model_dir = mapped
    (tmp_path / "w.json").write_text(json.dumps([{"jawOpen": 0.2, "eyeBlink_L": 0.9}, {"JawOpen": 0.7}]))
    out = tmp_path / "ply"
    assert main(["animate", "--model", str(model_dir), "--identity", "seed:3", "--weights", str(tmp_path / "w.json"),
                 "--out", str(out), "--format", "ply"]) == 0  # fmt: skip
    expected = _expected(model, {"jawOpen": [0.2, 0.7], "eyeBlink_L": [0.9, 0.0]})
    for i in range(2):
        m = trimesh.load(out / f"frame_{i:05d}.ply", process=False)
        np.testing.assert_allclose(m.vertices, expected[i], atol=1e-5)
        assert np.array_equal(m.faces, model.faces.numpy())


def test_identity_from_a_mesh_file(mapped, tmp_path):
    model, model_dir = mapped
    face = model.sample(1, seed=11)
    mesh = face.export(tmp_path / "me.obj")[0]
    write_weights_csv(tmp_path / "w.csv", {"jawOpen": [0.0, 1.0]}, spelling="arkit")
    assert main(["animate", "--model", str(model_dir), "--identity", str(mesh), "--weights", str(tmp_path / "w.csv"),
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    # the encoded face is the rest pose: frame 0 (weights 0) is its fit, frame 1 = add_expressions(fit, weights)
    fit = model.encode(mesh)
    np.testing.assert_allclose(load_mesh(tmp_path / "o" / "frame_00000.obj").vertices, fit.numpy()[0], atol=1e-4)
    np.testing.assert_allclose(load_mesh(tmp_path / "o" / "frame_00001.obj").vertices,
                               model.add_expressions(fit, {"jawOpen": 1.0}).numpy()[0], atol=1e-4)  # fmt: skip


def _read_glb(path: Path):
    data = path.read_bytes()
    magic, version, length = struct.unpack("<III", data[:12])
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    jlen, jtype = struct.unpack("<II", data[12:20])
    assert jtype == 0x4E4F534A
    gltf = json.loads(data[20 : 20 + jlen])
    blen, btype = struct.unpack("<II", data[20 + jlen : 28 + jlen])
    assert btype == 0x004E4942
    binary = data[28 + jlen : 28 + jlen + blen]
    assert len(binary) == gltf["buffers"][0]["byteLength"]

    def accessor(i):
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        dtype = {5126: np.float32, 5125: np.uint32}[acc["componentType"]]
        width = {"SCALAR": 1, "VEC3": 3}[acc["type"]]
        arr = np.frombuffer(binary, dtype, acc["count"] * width, view["byteOffset"])
        return arr.reshape(acc["count"], width) if width > 1 else arr

    return gltf, accessor


def test_glb_holds_the_frames_as_animated_morph_targets(mapped, tmp_path):
    model, model_dir = mapped
    write_weights_csv(tmp_path / "take.csv", _take(4), spelling="ict")
    out = tmp_path / "take.glb"
    assert main(["animate", "--model", str(model_dir), "--identity", "3", "--weights", str(tmp_path / "take.csv"),
                 "--out", str(out), "--fps", "30"]) == 0  # fmt: skip
    gltf, acc = _read_glb(out)
    prim = gltf["meshes"][0]["primitives"][0]
    base = acc(prim["attributes"]["POSITION"])
    frames = np.stack([base + acc(t["POSITION"]) for t in prim["targets"]])
    np.testing.assert_allclose(frames, _expected(model, _take(4)), atol=1e-4)
    assert np.array_equal(acc(prim["indices"]).reshape(-1, 3), model.faces.numpy())
    for t in prim["targets"]:  # glTF requires min / max on POSITION accessors
        assert "min" in gltf["accessors"][t["POSITION"]] and "max" in gltf["accessors"][t["POSITION"]]
    sampler = gltf["animations"][0]["samplers"][0]
    np.testing.assert_allclose(acc(sampler["input"]), np.arange(4) / 30, atol=1e-6)
    np.testing.assert_array_equal(acc(sampler["output"]).reshape(4, 4), np.eye(4))
    assert gltf["animations"][0]["channels"][0]["target"]["path"] == "weights"
    # base = the identity at zero weights
    z = model.sample(1, seed=3).codes.clone()
    z[:, model.code_slices["expression"]] = model.expression_from_blendshapes(torch.zeros(1, 53))
    np.testing.assert_allclose(base, model.decode(z).numpy()[0], atol=1e-4)
    scene = trimesh.load(out)  # a standard loader reads it (the rest shape)
    geom = list(scene.geometry.values())[0]
    assert geom.vertices.shape == (model.num_vertices, 3)


def test_progress_bar_on_long_inputs(mapped, tmp_path, capsys):
    _, model_dir = mapped
    write_weights_csv(tmp_path / "long.csv", {"jawOpen": np.linspace(0, 1, 240, dtype=np.float32)})
    argv = ["animate", "--model", str(model_dir), "--identity", "1", "--weights", str(tmp_path / "long.csv"),
            "--out", str(tmp_path / "long.glb"), "--batch-size", "100"]  # fmt: skip
    assert main(argv) == 0
    assert "240/240" in capsys.readouterr().err
    assert main(argv + ["--quiet", "--overwrite"]) == 0  # an existing .glb is kept unless --overwrite
    assert "240/240" not in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ("JawOpen,EyeBlinkLeft\n0.1,0.2\nnan,0.1\n", "NaN"),
    ("JawOpen,EyeBlinkLeft\n0.1,0.2\n-0.4,0.1\n", "outside [0, 1]"),
    ("JawOpen,EyeBlinkLeft\n0.1,0.2\n0.3,1.5\n", "outside [0, 1]"),
    ("Timecode,BlendShapeCount,HeadYaw\n1,61,0.2\n", "no column names a blendshape"),
    ("JawOpen,EyeBlinkLeft\n0.1,0.2\n0.3\n", "ragged"),
    ("JawOpen,EyBlinkLeft\n0.1,0.2\n", "did you mean 'eyeBlinkLeft'"),
])  # fmt: skip
@pytest.mark.parametrize("target", ["dir", "take.glb"])
def test_bad_input_gives_a_clear_error_and_no_output(mapped, tmp_path, capsys, text, words, target):
    _, model_dir = mapped
    (tmp_path / "bad.csv").write_text(text)
    out = tmp_path / "out" / target
    assert main(["animate", "--model", str(model_dir), "--identity", "3", "--weights", str(tmp_path / "bad.csv"),
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("facemodel: error: bad.csv") and words in err
    assert not out.exists() and (not out.parent.exists() or _leftovers(out.parent) == [])


def test_overshoot_within_tolerance_is_clipped(mapped, tmp_path):
    model, model_dir = mapped
    (tmp_path / "w.csv").write_text("JawOpen\n1.04\n-0.03\n")
    assert main(["animate", "--model", str(model_dir), "--identity", "3", "--weights", str(tmp_path / "w.csv"),
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    np.testing.assert_allclose(load_mesh(tmp_path / "o" / "frame_00000.obj").vertices,
                               _expected(model, {"jawOpen": 1.0})[0], atol=2e-5)  # fmt: skip


def test_existing_output_folder_is_kept_without_overwrite(mapped, tmp_path, capsys):
    _, model_dir = mapped
    write_weights_csv(tmp_path / "w.csv", {"jawOpen": [0.5]})
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["animate", "--model", str(model_dir), "--identity", "3", "--weights", str(tmp_path / "w.csv"), "--out", str(out)]
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["frame_00000.obj"]
    assert _leftovers(tmp_path) == []


def test_model_without_a_map_names_the_command(random_model_dir, tmp_path, capsys):
    write_weights_csv(tmp_path / "w.csv", {"jawOpen": [0.5]})
    assert main(["animate", "--model", str(random_model_dir), "--identity", "3", "--weights", str(tmp_path / "w.csv"),
                 "--out", str(tmp_path / "o.glb")]) == 2  # fmt: skip
    assert "python -m facemodel.training.blendshape_map" in capsys.readouterr().err
    assert not (tmp_path / "o.glb").exists()


def test_example_animate_from_arkit(mapped, tmp_path, capsys):
    _, model_dir = mapped
    spec = importlib.util.spec_from_file_location("animate_from_arkit", EXAMPLES / "animate_from_arkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model", str(model_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "75 frames from take.csv" in out and "mean absolute error" in out
    assert (tmp_path / "take.csv").read_text().startswith("Timecode,BlendShapeCount,")
    gltf, _ = _read_glb(tmp_path / "take.glb")
    assert len(gltf["meshes"][0]["primitives"][0]["targets"]) == 75
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "strip.png"))
    assert img.shape[1] > 3 * img.shape[0] and img.std() > 10  # a strip of several rendered faces
    assert len(list((tmp_path / "frames").glob("*.obj"))) >= 6
