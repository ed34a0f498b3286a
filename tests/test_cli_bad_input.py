"""Every subcommand with a bad argument or a bad file exits 2 with one line on stderr that
names the fix, never a traceback, and leaves no output behind (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest

from facemodel.cli import main


def _run(argv, capsys, tmp_path, *, outputs=()):
    before = set(tmp_path.rglob("*"))
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert code == 2, (code, captured.err)
    assert len(err) == 1, captured.err
    assert "Traceback" not in captured.err and "error" in err[0]
    for out in outputs:
        assert not out.exists(), f"{out} was written"
    after = set(tmp_path.rglob("*"))
    assert not [p for p in after - before if p.name.endswith(".part")], "a temporary file was left behind"
    return err[0]


@pytest.fixture()
def files(tmp_path):
    """Bad input files of every kind the CLI reads."""
    f = {
        "garbage_obj": tmp_path / "garbage.obj",
        "nan_obj": tmp_path / "nan.obj",
        "small_obj": tmp_path / "small.obj",
        "binary_ply": tmp_path / "binary.ply",
        "points_text": tmp_path / "points.csv",
        "points_inf": tmp_path / "inf.json",
        "points_pickle": tmp_path / "obj.npy",
        "weights_ragged": tmp_path / "ragged.csv",
        "weights_bytes": tmp_path / "bytes.json",
        "weights_range": tmp_path / "range.csv",
    }
    f["garbage_obj"].write_text("v 1 2\nf 1 2 3\n")
    f["nan_obj"].write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    f["small_obj"].write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    f["binary_ply"].write_bytes(b"ply\x00\xff\xfe garbage")
    f["points_text"].write_text("x,y,z\n1,2,abc\n")
    f["points_inf"].write_text("[[1, 2, 3], [Infinity, 0, 0]]")
    np.save(f["points_pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["weights_ragged"].write_text("jawOpen,eyeBlinkLeft\n0.1,0.2\n0.3\n")
    f["weights_bytes"].write_bytes(b"\xff\xfe\x00{")
    f["weights_range"].write_text("jawOpen\n45\n")
    return f


def test_usage_errors_are_one_line(tmp_path, capsys):
    for argv in (["sample", "-n", "x"], ["sample", "--truncation", "half"], ["fit"], ["nosuchcommand"], [],
                 ["animate", "--identity", "1"], ["data", "build-ict", "--out", "x"], ["render"],
                 ["encode", "--size", "-"], ["add", "--target", "seed:1", "--expression", "happiness",
                                             "--weights", "x"]):  # fmt: skip
        line = _run(argv, capsys, tmp_path)
        assert "--help" in line, line


def test_sample_bad_values(tmp_path, capsys):
    out = tmp_path / "s.obj"
    assert "n must be" in _run(["sample", "-n", "0", "--out", out], capsys, tmp_path, outputs=[out])
    assert "truncation" in _run(["sample", "--truncation", "nan", "--out", out], capsys, tmp_path, outputs=[out])
    assert "truncation" in _run(["sample", "--truncation", "3", "--out", out], capsys, tmp_path, outputs=[out])
    assert "at most" in _run(["sample", "-n", str(2**40), "--out", out], capsys, tmp_path, outputs=[out])
    assert "expression" in _run(["sample", "--expression", "joyful", "--out", out], capsys, tmp_path, outputs=[out])
    assert "--expression-prior" in _run(["sample", "--expression-prior", "uniform", "--out", out], capsys, tmp_path,
                                        outputs=[out])  # fmt: skip
    assert "export format" in _run(["sample", "--out", tmp_path / "s.fbx"], capsys, tmp_path)
    assert "cannot write" in _run(["sample", "--out", "/proc/x.obj"], capsys, tmp_path)


def test_info_bad_model_folders(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    assert "config" in _run(["info", "--model", tmp_path / "m"], capsys, tmp_path)
    assert "device" in _run(["info", "--device", "tpu9"], capsys, tmp_path)


def test_transfer_add_encode_bad_meshes(tmp_path, capsys, files):
    out = tmp_path / "o.obj"
    for mesh in ("garbage_obj", "nan_obj", "small_obj", "binary_ply"):
        _run(["encode", files[mesh], "--out", out], capsys, tmp_path, outputs=[out])
    _run(["transfer", "--source", files["small_obj"], "--target", "seed:1", "--out", out], capsys, tmp_path,
         outputs=[out])  # fmt: skip
    _run(["transfer", "--source", "seed:1", "--target", tmp_path / "missing.obj"], capsys, tmp_path)
    _run(["transfer", "--source", "seed:abc", "--target", "seed:1"], capsys, tmp_path)
    _run(["add", "--target", files["nan_obj"], "--expression", "happiness"], capsys, tmp_path)
    assert "weights" in _run(["add", "--target", "seed:1", "--expression", "happiness", "--weights", "nan"], capsys,
                             tmp_path)  # fmt: skip


def test_fit_bad_landmark_files(tmp_path, capsys, files):
    out = tmp_path / "fit.obj"
    for name in ("points_text", "points_inf", "points_pickle"):
        _run(["fit", files[name], "--out", out], capsys, tmp_path, outputs=[out])
    _run(["fit", tmp_path / "none.npy"], capsys, tmp_path)
    np.save(tmp_path / "huge.npy", np.full((68, 3), 1e30))
    assert "units" in _run(["fit", tmp_path / "huge.npy", "--out", out], capsys, tmp_path, outputs=[out])
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(68, 3)))
    assert "reg" in _run(["fit", tmp_path / "ok.npy", "--reg", "-1"], capsys, tmp_path)
    assert "noise_mm" in _run(["fit", tmp_path / "ok.npy", "--noise-mm", "-1", "--out", out], capsys, tmp_path,
                              outputs=[out])  # fmt: skip
    assert "not both" in _run(["fit", tmp_path / "ok.npy", "--noise-mm", "1", "--reg", "3", "--out", out], capsys,
                              tmp_path, outputs=[out])  # fmt: skip
    assert "'auto'" in _run(["fit", tmp_path / "ok.npy", "--noise-mm", "autox", "--out", out], capsys, tmp_path,
                            outputs=[out])  # fmt: skip
    np.save(tmp_path / "ok2d.npy", np.random.default_rng(0).normal(size=(68, 2)))
    assert "--noise-mm" in _run(["fit", tmp_path / "ok2d.npy", "--noise-mm", "1", "--out", out], capsys, tmp_path,
                                outputs=[out])  # fmt: skip


def test_animate_bad_weight_files(tmp_path, capsys, files):
    out = tmp_path / "frames"
    for name in ("weights_ragged", "weights_bytes", "weights_range"):
        _run(["animate", "--identity", "1", "--weights", files[name], "--out", out], capsys, tmp_path, outputs=[out])
    _run(["animate", "--identity", files["garbage_obj"], "--weights", files["weights_range"], "--out", out], capsys,
         tmp_path, outputs=[out])  # fmt: skip
    (tmp_path / "ok.csv").write_text("jawOpen\n0.5\n")
    _run(["animate", "--identity", "1", "--weights", tmp_path / "ok.csv", "--out", out, "--batch-size", "0"], capsys,
         tmp_path, outputs=[out])  # fmt: skip
    _run(["animate", "--identity", "1", "--weights", tmp_path / "ok.csv", "--out", "/proc/anim.glb"], capsys, tmp_path)


def test_render_and_data_commands_bad_files(tmp_path, capsys, files):
    png = tmp_path / "r.png"
    _run(["render", files["garbage_obj"], "--png", png], capsys, tmp_path, outputs=[png])
    _run(["render", files["small_obj"], files["binary_ply"], "--png", png], capsys, tmp_path, outputs=[png])
    _run(["render", files["small_obj"], "--png", png, "--size", "-5"], capsys, tmp_path, outputs=[png])
    _run(["data", "info", tmp_path / "nothing"], capsys, tmp_path)
    _run(["data", "build-ict", "--source", tmp_path, "--out", tmp_path / "ds"], capsys, tmp_path,
         outputs=[tmp_path / "ds"])  # fmt: skip
    _run(["data", "import", "--template", files["garbage_obj"], "--meshes", tmp_path, "--labels",
          files["weights_ragged"], "--out", tmp_path / "ds"], capsys, tmp_path, outputs=[tmp_path / "ds"])  # fmt: skip


def test_train_and_evaluate_bad_arguments(tmp_path, capsys):
    _run(["train", "--config", tmp_path / "missing.yaml", "--out", tmp_path / "run"], capsys, tmp_path)
    _run(["evaluate", "--model", tmp_path / "nomodel", "--data", tmp_path, "--out", tmp_path / "ev"], capsys, tmp_path,
         outputs=[tmp_path / "ev"])  # fmt: skip
