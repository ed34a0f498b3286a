"""Figures of the evaluation report, laid out like the paper's (PNG, software-rendered).

- :func:`samples_figure`: Fig. 3: per model, random samples, samples sharing an expression
  code, samples sharing an identity code.
- :func:`factor_figure`: Fig. 8 (``factor="identity"``: each row one identity code, random
  expressions) and Fig. 9 (``factor="expression"``).
- :func:`transfer_figure`: Fig. 4: a source's expression code given to target identities.
- :func:`reconstruction_figure`: Fig. 10a: sparse-landmark fits next to the ground truth.

Every function takes :class:`~facemodel.evaluation.protocol.ShapeModel` objects, so our model
and the baselines are drawn the same way, and returns a PIL image (save with
:func:`facemodel.geometry.render.save_png`, which writes atomically).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..geometry.render import _label_font, fit_text, render_grid
from .protocol import Codes, EvaluationError, ShapeModel

__all__ = ["samples_figure", "factor_figure", "transfer_figure", "reconstruction_figure", "stack_titled"]


def _check_models(models: Sequence[ShapeModel]) -> None:
    if not models:
        raise EvaluationError("no models to draw: pass at least one ShapeModel")
    for m in models:
        if not isinstance(m, ShapeModel):
            raise EvaluationError(f"expected ShapeModel objects, got {type(m).__name__}; wrap a FaceModel in FaceModelAdapter")


def stack_titled(panels: Sequence[tuple[str, Image.Image]], *, title_height: int = 22) -> Image.Image:
    """Stack images vertically, each under a one-line title (white background)."""
    width = max(im.width for _, im in panels)
    height = sum(im.height + title_height for _, im in panels)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = _label_font(title_height - 6)
    y = 0
    for title, im in panels:
        draw.text((4, y + 2), fit_text(draw, title, font, width - 8), fill=(0, 0, 0), font=font)
        out.paste(im, (0, y + title_height))
        y += im.height + title_height
    return out


def _shared(codes: Codes, factor: str) -> Codes:
    """Codes with ``factor`` of row 0 copied to every row."""
    c = Codes(codes.identity.clone(), codes.expression.clone(), codes.noise.clone())
    getattr(c, factor)[:] = getattr(codes, factor)[:1]
    return c


def _grid(model: ShapeModel, codes: Codes, size: int, ncols: int, labels=None) -> Image.Image:
    v = model.decode_batched(codes).cpu().numpy()
    return render_grid(v, model.faces, size=size, ncols=ncols, labels=labels)


def samples_figure(models: Sequence[ShapeModel], *, n: int = 5, size: int = 96, seed: int = 0) -> Image.Image:
    """Fig. 3: for each model three rows of ``n`` faces: random; same expression code; same
    identity code."""
    _check_models(models)
    panels = []
    for m in models:
        g = torch.Generator().manual_seed(seed)
        rows = [m.sample_codes(n, generator=g), _shared(m.sample_codes(n, generator=g), "expression"),
                _shared(m.sample_codes(n, generator=g), "identity")]  # fmt: skip
        codes = Codes.cat(rows)
        panels.append((f"{m.name}: random | same expression code | same identity code", _grid(m, codes, size, n)))
    return stack_titled(panels)


def factor_figure(models: Sequence[ShapeModel], factor: str, *, rows: int = 3, cols: int = 6, size: int = 80,
                  seed: int = 0) -> Image.Image:  # fmt: skip
    """Fig. 8 (``factor="identity"``) / Fig. 9 (``"expression"``): per model, ``rows`` rows
    of ``cols`` samples, each row sharing one ``factor`` code, the other codes random."""
    if factor not in ("identity", "expression"):
        raise EvaluationError(f"factor must be 'identity' or 'expression', got {factor!r}")
    _check_models(models)
    panels = []
    for m in models:
        g = torch.Generator().manual_seed(seed)
        codes = Codes.cat([_shared(m.sample_codes(cols, generator=g), factor) for _ in range(rows)])
        panels.append((f"{m.name}: each row shares one {factor} code", _grid(m, codes, size, cols)))
    return stack_titled(panels)


def transfer_figure(models: Sequence[ShapeModel], *, targets: int = 4, size: int = 96, seed: int = 0) -> Image.Image:
    """Fig. 4: per model, the source face first, then ``targets`` identities wearing the
    source's expression code (identity and noise codes of each target kept)."""
    _check_models(models)
    panels = []
    for m in models:
        g = torch.Generator().manual_seed(seed)
        src = m.sample_codes(1, generator=g)
        tgt = m.sample_codes(targets, generator=g)
        tgt.expression[:] = src.expression
        codes = Codes.cat([src, tgt])
        labels = ["source"] + [f"target {i + 1}" for i in range(targets)]
        panels.append((f"{m.name}: source expression code on new identities", _grid(m, codes, size, targets + 1, labels)))
    return stack_titled(panels)


def reconstruction_figure(ground_truth: np.ndarray | torch.Tensor, fits: dict[str, np.ndarray | torch.Tensor],
                          faces: np.ndarray, *, size: int = 96) -> Image.Image:  # fmt: skip
    """Fig. 10a: each row a test mesh: ground truth, then each model's fit.

    Args:
        ground_truth: (T, V, 3) test meshes, mm.
        fits: model name -> (T, V, 3) fitted meshes, mm (same order).
        faces: (F, 3) shared triangles.
    """
    gt = np.asarray(ground_truth, dtype=np.float32)
    if gt.ndim != 3 or not fits:
        raise EvaluationError("reconstruction_figure needs (T, V, 3) ground truth and at least one fit")
    cols = [gt] + [np.asarray(f, dtype=np.float32) for f in fits.values()]
    for name, f in zip(fits, cols[1:]):
        if f.shape != gt.shape:
            raise EvaluationError(f"fit {name!r} has shape {f.shape}, expected {gt.shape}")
    T, k = gt.shape[0], len(cols)
    grid = np.stack(cols, axis=1).reshape(T * k, *gt.shape[1:])
    labels = (["ground truth"] + list(fits)) * T
    return render_grid(grid, faces, size=size, ncols=k, labels=labels)
