"""The documentation figures script (examples/dataset_figures.py) on the small dataset."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facemodel.errors import DatasetFormatError
from facemodel.geometry.geometry_image import GeometryImage

REPO = Path(__file__).resolve().parents[1]

FIGURES = ("ict4d_expressions.png", "ict4d_identities.png", "ict4d_sequence.png", "ict4d_geometry_image.png")


@pytest.fixture(scope="module")
def figures_module():
    path = REPO / "examples" / "dataset_figures.py"
    spec = importlib.util.spec_from_file_location("dataset_figures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dataset_figures"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("dataset_figures", None)


def test_writes_four_nonblank_figures(figures_module, small_dataset, tmp_path, capsys):
    assert figures_module.main(["--data", str(small_dataset), "--out", str(tmp_path)]) == 0  # tiles of 192 px
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(tmp_path / name) for name in FIGURES)
    for name in FIGURES:
        path = tmp_path / name
        assert path.is_file(), name
        assert path.stat().st_size < 300_000, name
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG"
            w, h = im.size
            a = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert 192 * 2 <= w <= 192 * 8 and 192 <= h <= 192 * 4, (name, im.size)
        assert a.std() > 20, name  # not blank
        # the mesh renders are there: plenty of non-white (shaded) pixels
        assert (a.min(axis=2) < 230).mean() > 0.1, name


def test_geometry_image_rgb(figures_module, small_dataset):
    ds = figures_module.load_dataset(small_dataset)
    tpl = ds.template
    layer = GeometryImage(tpl.uv, tpl.faces, resolution=32)
    rgb = figures_module.geometry_image_rgb(layer(torch.from_numpy(ds.vertices(np.arange(1))))[0], layer.mask)
    mask = layer.mask.numpy()
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert (rgb[~mask] == 128).all() and (~mask).any()
    covered = rgb[mask].astype(int)
    assert (covered.min(0) == 0).all() and (covered.max(0) == 255).all()  # x, y, z each span [0, 1]
    # upright and not mirrored: y (green) grows upwards, x (red) to the image right
    col = np.flatnonzero(mask[:, 16])
    assert rgb[col[0], 16, 1] > rgb[col[-1], 16, 1]
    row = np.flatnonzero(mask[16])
    assert rgb[16, row[-1], 0] > rgb[16, row[0], 0]


def test_missing_data_gives_clear_errors(figures_module, small_dataset, tmp_path):
    ds = figures_module.load_dataset(small_dataset)
    with pytest.raises(DatasetFormatError, match="no expression label"):
        figures_module.pick_identities(ds, label="contempt")
    # a folder that is not a dataset: error message, exit status 1, nothing written
    assert figures_module.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_selections_follow_the_dataset_layout(figures_module, small_dataset):
    ds = figures_module.load_dataset(small_dataset)
    expr, ident = ds.meta("expression"), ds.meta("identity")
    sel = figures_module.pick_expressions(ds)
    assert sel.captions == ds.expression_labels  # a static subject has all seven
    assert len(set(ident[sel.rows])) == 1
    assert [ds.expression_labels[k] for k in expr[sel.rows]] == sel.captions
    seq = figures_module.pick_sequence(ds)
    frames = ds.meta("frame")[seq.rows]
    assert len(set(ds.meta("sequence")[seq.rows])) == 1
    assert list(frames) == sorted(frames) and 12 in frames
    assert seq.highlight == tuple(expr[seq.rows] >= 0)
    assert "frame 12: surprise" in seq.captions
    ids = figures_module.pick_identities(ds)
    happiness = ds.expression_labels.index("happiness")
    assert (expr[ids.rows] == happiness).all() and len(set(ident[ids.rows])) == len(ids.rows) >= 2
