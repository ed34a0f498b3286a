"""Baseline face models for the evaluation suite (paper Tables 1 and 2).

All of them are :class:`~facemodel.evaluation.protocol.ShapeModel` s with normalised codes
(identity and expression codes whose prior is N(0, I), no noise code), so every metric and
the landmark-fitting protocol run on them unchanged:

- :class:`LinearModel`: identity PCA of per-identity neutral faces + PCA of expression
  displacements (additive, Amberg et al. 2008). Exact fast landmark fit (ridge).
- :class:`MultilinearModel`: Tucker model of the identity x expression x vertex tensor
  (Vlasic et al. 2005), fitted by ALS with missing data; expressions are put in
  correspondence across identities through the meshes' blendshape weights. Fast landmark
  fit by Levenberg-Marquardt (bilinear least squares).
- :class:`AutoencoderModel`: identity PCA + a COMA-style spectral mesh autoencoder on
  expression displacements (DeepFLAME, Ranjan et al. 2018); no fast landmark fit (``None``).

Common API (``Model`` is any of the three)::

    m = Model.fit(data, identity_dim=65, expression_dim=20, max_meshes=None, seed=0, ...)
    m.decode(codes, vertices=None)           # (n, V, 3) / (n, K, 3) mm, differentiable
    m.sample(n) / m.sample_codes(n)          # prior N(0, I)
    m.fit_landmarks_fast(points, vertices, reg)   # Codes, or None for the autoencoder
    m.project(meshes, ...)                   # codes of full meshes (see each class)
    m.save(path, overwrite=False); Model.load(path); load_baseline(path)

``data`` is a dataset folder (its ``train`` split is used) or a
:class:`~facemodel.data.dataset.FaceDataset`. Sizes larger than the data supports are
clipped with a ``UserWarning``; ``m.info`` records how the model was fitted.
"""

from __future__ import annotations

import os

from ._common import BaselineModel, find_neutrals
from .autoencoder import AutoencoderModel
from .linear import LinearModel
from .multilinear import MultilinearModel

__all__ = [
    "BaselineModel",
    "LinearModel",
    "MultilinearModel",
    "AutoencoderModel",
    "load_baseline",
    "find_neutrals",
    "BASELINES",
]

BASELINES: dict[str, type[BaselineModel]] = {
    LinearModel.kind: LinearModel,
    MultilinearModel.kind: MultilinearModel,
    AutoencoderModel.kind: AutoencoderModel,
}


def load_baseline(path: str | os.PathLike) -> BaselineModel:
    """Load any baseline saved with ``.save(path)`` (its kind is read from ``config.json``).

    Raises:
        EvaluationError: not a saved baseline, or of an unknown kind.
    """
    return BaselineModel.load(path)
