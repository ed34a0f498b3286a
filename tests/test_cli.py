import json
import subprocess
import sys

import numpy as np

from facemodel.cli import main
from facemodel.geometry.mesh_io import save_obj


def test_build_ict_and_info(ict_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "build-ict", "--source", str(ict_dir), "--out", str(out), "--size", "600",
                 "--identities", "10", "--seed", "3", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "wrote 600 meshes of 10 identities" in printed and "checksum" in printed
    assert main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "meshes       600" in info and "labelled (" in info and "happiness" in info
    assert main(["data", "info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["seed"] == 3 and manifest["num_identities"] == 10
    # a second build into the same folder is refused with a clear message and exit 2
    assert main(["data", "build-ict", "--source", str(ict_dir), "--out", str(out), "--size", "600",
                 "--identities", "10", "--quiet"]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["data", "build-ict", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "facemodel: error:" in err and "shapes.npz" in err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_import_command(template, tmp_path, capsys):
    meshes = tmp_path / "meshes"
    rng = np.random.default_rng(0)
    rows = ["file,identity,expression"]
    for k in range(6):
        save_obj(meshes / f"m{k}.obj", template.vertices + rng.normal(0, 0.5, template.vertices.shape), template.faces)
        rows.append(f"m{k}.obj,subject{k % 3},{'happiness' if k % 2 else ''}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    save_obj(tmp_path / "template.obj", template.vertices, template.faces)
    code = main(["data", "import", "--template", str(tmp_path / "template.obj"), "--meshes", str(meshes),
                 "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "ds"), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "wrote 6 meshes of 3 identities" in capsys.readouterr().out


def test_module_entry_point_and_version():
    r = subprocess.run([sys.executable, "-m", "facemodel", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("facemodel ")
    r = subprocess.run([sys.executable, "-m", "facemodel", "data", "build-ict"], capture_output=True, text=True)
    assert r.returncode == 2 and "--source" in r.stderr
