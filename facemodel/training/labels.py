"""Training labels per factor (identity classes, expression labels) and the critic's regression targets."""

from __future__ import annotations

import numpy as np

from ..data.dataset import FaceDataset
from ..errors import DatasetFormatError

__all__ = ["IDENTITY_TARGET_DIMS", "factor_labels", "factor_targets"]

#: Identity coefficients regressed by the critic's identity branch (term ``regression``):
#: the first 40 of ICT's 100 unit-variance PCA modes (together 97 % of the identity variance
#: of the face area; the later modes move it by < 0.4 mm RMS).
IDENTITY_TARGET_DIMS = 40

def factor_labels(dataset: FaceDataset, source: str) -> tuple[np.ndarray, list[str]]:
    """(N,) labels of the dataset's rows for a factor's label source, and the label names."""
    if source == "identity":
        names = [str(n) for n in dataset.identity_table("names")[dataset.identity_ids]]
        return dataset.identity_classes().astype(np.int64), names
    if source == "expression":
        return dataset.meta("expression").astype(np.int64), dataset.expression_labels
    raise DatasetFormatError(f"unknown label source {source!r}")


def factor_targets(dataset: FaceDataset, source: str) -> np.ndarray:
    """(N, T) float32 regression targets of the dataset's rows for a factor's label source.

    Our ICT 4D data knows more than the paper's discrete labels: every mesh records its
    identity's PCA coefficients and its 53 blendshape weights. With the ``regression`` term on, the
    critic's identity branch regresses the first :data:`IDENTITY_TARGET_DIMS` identity
    coefficients and its expression branch the 53 blendshape weights of *every*
    real mesh, so the branch features that the feature loss compares describe the whole
    identity and the whole expression rather than a 7-way emotion label.

    Raises:
        DatasetFormatError: the dataset lacks the data (not an ICT 4D dataset).
    """
    try:
        if source == "identity":
            return dataset.identity_table("pca_weights")[dataset.meta("identity")][:, :IDENTITY_TARGET_DIMS].astype(np.float32)
        if source == "expression":
            return dataset.meta("blendshapes").astype(np.float32)
    except KeyError as exc:
        raise DatasetFormatError(
            f"regression targets for {source!r} need an ICT 4D dataset (identity PCA weights and blendshape "
            "weights); build one with `facemodel data build-ict`, or set regression.weight=0") from exc
    raise DatasetFormatError(f"unknown label source {source!r}")
