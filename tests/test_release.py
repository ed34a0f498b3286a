"""Packaging a model as the released weights (python -m facemodel.training.release)."""

from __future__ import annotations

import json

import pytest
import torch

from facemodel.model import FaceModel
from facemodel.training import release as release_module
from facemodel.training.release import ReleaseError, main, make_release


def test_release_folder_loads_back_with_float16_weights(random_model_dir, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("## Training data\n\nThe ICT 4D dataset.\n")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"settings": {"quick": True}, "table1": {"ours": {"dec_id": 97.0, "dec_exp": 40.0,
                                   "div": 7.0, "div_id": 2.0, "div_exp": 6.0, "spec": 4.0, "spill": 1.0}}}))  # fmt: skip
    out = make_release(random_model_dir, tmp_path / "weights", results_json=results, notes_file=notes)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    assert state["generator.fc2.weight"].dtype == torch.float16
    assert state["template"].dtype == torch.float32  # vertices keep full precision
    original, released = FaceModel.from_pretrained(random_model_dir), FaceModel.from_pretrained(out)
    a, b = original.sample(8, seed=0).vertices, released.sample(8, seed=0).vertices
    assert (a - b).norm(dim=-1).max() < 0.05  # mm
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit") and "The ICT 4D dataset." in card and "| ours | 97.0 | 40.0" in card
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.6 * (random_model_dir / "model.safetensors").stat().st_size


def test_release_over_budget_is_refused_and_leaves_the_old_folder(random_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "weights"
    out.mkdir()
    (out / "README.md").write_text("old")
    monkeypatch.setattr(release_module, "MAX_RELEASE_BYTES", 1000)
    with pytest.raises(ReleaseError, match="budget"):
        make_release(random_model_dir, out)
    assert [p.name for p in out.iterdir()] == ["README.md"] and (out / "README.md").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_release_cli_reports_missing_inputs(random_model_dir, tmp_path, capsys):
    rc = main(["--model", str(random_model_dir), "--out", str(tmp_path / "w"), "--evaluation", str(tmp_path / "nope.json")])
    assert rc == 2 and "facemodel evaluate" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
