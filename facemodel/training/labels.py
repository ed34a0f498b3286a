"""Training labels per factor: identity classes, expression labels, visemes."""

from __future__ import annotations

import numpy as np

from ..data.dataset import FaceDataset
from ..data.expressions import ICT_BLENDSHAPES
from ..errors import DatasetFormatError

__all__ = ["VISEMES", "IDENTITY_TARGET_DIMS", "viseme_labels", "expression_cluster_labels", "factor_labels", "factor_targets"]

#: Identity coefficients regressed by the critic's identity branch (``lambda_regress`` in the config):
#: the first 40 of ICT's 100 unit-variance PCA modes (together 97 % of the identity variance
#: of the face area; the later modes move it by < 0.4 mm RMS).
IDENTITY_TARGET_DIMS = 40

#: Mouth-shape classes derived from ICT blendshape weights (a simple viseme set).
VISEMES: tuple[str, ...] = ("closed", "open", "round", "wide")
_VISEME_SHAPES = {
    "closed": ("mouthClose", "mouthPress_L", "mouthPress_R", "mouthRollLower", "mouthRollUpper"),
    "open": ("jawOpen", "mouthLowerDown_L", "mouthLowerDown_R"),
    "round": ("mouthFunnel", "mouthPucker"),
    "wide": ("mouthStretch_L", "mouthStretch_R", "mouthSmile_L", "mouthSmile_R"),
}


def viseme_labels(blendshapes: np.ndarray, *, threshold: float = 0.3) -> np.ndarray:
    """Viseme class per mesh from its ICT weights: the mouth group with the largest weight,
    or -1 when no group reaches ``threshold``.

    Args:
        blendshapes: (N, 53) weights in [0, 1].

    Returns:
        (N,) int64 labels in ``0 .. len(VISEMES) - 1`` or -1.
    """
    idx = {n: i for i, n in enumerate(ICT_BLENDSHAPES)}
    score = np.stack([blendshapes[:, [idx[n] for n in _VISEME_SHAPES[v]]].max(1) for v in VISEMES], 1)
    out = score.argmax(1).astype(np.int64)
    out[score.max(1) < threshold] = -1
    return out


def expression_cluster_labels(dataset: FaceDataset, clusters: int = 32, *, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Every mesh labelled: its expression label where the data has one, else the nearest of
    ``clusters`` k-means centres of the unlabelled meshes' 53 blendshape weights.

    The paper's expression classifier sees 7 labels on 7 % of our meshes; this label set keeps
    those names (so ``sample(expression="happiness")`` still works) and adds ``cluster_00`` ...
    so that the classifier, its features and the label codes cover every expression.

    Returns:
        (N,) int64 labels (expression labels first, then clusters) and their names.

    Raises:
        DatasetFormatError: no blendshape weights (not an ICT 4D dataset).
    """
    from scipy.cluster.vq import kmeans2

    try:
        w = dataset.meta("blendshapes").astype(np.float64)
    except KeyError as exc:
        raise DatasetFormatError("expression_clusters labels need ICT blendshape weights (an ICT 4D dataset)") from exc
    base = dataset.meta("expression").astype(np.int64)
    names = list(dataset.expression_labels)
    free = base < 0
    if int(free.sum()) < clusters:
        raise DatasetFormatError(f"expression_clusters: {int(free.sum())} unlabelled meshes cannot make {clusters} clusters; "
                                 "lower `clusters`")  # fmt: skip
    _, assign = kmeans2(w[free], clusters, minit="++", seed=np.random.default_rng(seed), iter=20)
    out = base.copy()
    out[free] = len(names) + assign
    return out, names + [f"cluster_{k:02d}" for k in range(clusters)]


def factor_labels(dataset: FaceDataset, source: str, *, clusters: int = 32, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(N,) labels of the dataset's rows for a factor's label source, and the label names."""
    if source == "identity":
        names = [str(n) for n in dataset.identity_table("names")[dataset.identity_ids]]
        return dataset.identity_classes().astype(np.int64), names
    if source == "expression":
        return dataset.meta("expression").astype(np.int64), dataset.expression_labels
    if source == "viseme":
        try:
            w = dataset.meta("blendshapes")
        except KeyError as exc:
            raise DatasetFormatError("viseme labels need ICT blendshape weights (an ICT 4D dataset)") from exc
        return viseme_labels(w), list(VISEMES)
    if source == "expression_clusters":
        return expression_cluster_labels(dataset, clusters, seed=seed)
    raise DatasetFormatError(f"unknown label source {source!r}")


def factor_targets(dataset: FaceDataset, source: str) -> np.ndarray:
    """(N, T) float32 regression targets of the dataset's rows for a factor's label source.

    Our ICT 4D data knows more than the paper's discrete labels: every mesh records its
    identity's PCA coefficients and its 53 blendshape weights. With ``lambda_regress`` > 0, the
    critic's identity branch regresses the first :data:`IDENTITY_TARGET_DIMS` identity
    coefficients and its expression (or viseme) branch the 53 blendshape weights of *every*
    real mesh, so the branch features that the feature loss compares describe the whole
    identity and the whole expression rather than a 7-way emotion label.

    Raises:
        DatasetFormatError: the dataset lacks the data (not an ICT 4D dataset).
    """
    try:
        if source == "identity":
            return dataset.identity_table("pca_weights")[dataset.meta("identity")][:, :IDENTITY_TARGET_DIMS].astype(np.float32)
        if source in ("expression", "viseme", "expression_clusters"):
            return dataset.meta("blendshapes").astype(np.float32)
    except KeyError as exc:
        raise DatasetFormatError(
            f"regression targets for {source!r} need an ICT 4D dataset (identity PCA weights and blendshape "
            "weights); build one with `facemodel data build-ict`, or set lambda_regress=0") from exc
    raise DatasetFormatError(f"unknown label source {source!r}")
