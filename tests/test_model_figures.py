"""examples/model_figures.py: the released weights by default, an untracked output folder."""

import importlib.util
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _module():
    spec = importlib.util.spec_from_file_location("model_figures", EXAMPLES / "model_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_figures_writes_the_four_figures(random_model, random_model_dir, tmp_path, capsys):
    assert _module().main(["--model", str(random_model_dir), "--out", str(tmp_path), "--size", "32"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model_expression_labels.png", "model_same_expression.png", "model_same_identity.png",
                     "model_samples.png"]  # fmt: skip
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in
                                               ("model_samples.png", "model_same_identity.png",
                                                "model_same_expression.png", "model_expression_labels.png")]  # fmt: skip
    gallery = Image.open(tmp_path / "model_expression_labels.png")
    assert gallery.size[0] == 32 * len(random_model.label_names["expression"])  # one column per label


def test_model_figures_defaults_stay_out_of_docs(monkeypatch, tmp_path, capsys):
    """No arguments: the released weights, into ./model-figures (never the tracked docs/images)."""
    monkeypatch.chdir(tmp_path)
    module = _module()
    seen = {}
    monkeypatch.setattr(module, "figures", lambda model, out, prefix, **kw: seen.update(out=out, prefix=prefix) or [])
    assert module.main([]) == 0
    assert seen == {"out": Path("model-figures"), "prefix": "released"}
