"""Identity and expression embedding networks: the judges of the decoupling metric (§5.3).

The paper measures decoupling with "two networks, one for identity and one for expression,
that transform an image representation of the mesh to an n-dimensional vector using
triplet loss [...] n = 128"; two meshes share an identity (expression) when the distance
between their embeddings is below a threshold tau. Its supplement: ResNet-18 on 224 x 224
orthographic renders whose RGB encodes vertex normals; tau "maximizes the accuracy on the
validation set, while keeping the False Acceptance Rate (FAR) below 10%", on a validation
set of equally many positive and negative pairs.

This module implements that protocol on the ICT 4D data, where the ground-truth generator
(:class:`~facemodel.data.builder.ICTFaceGenerator`) renders *any* identity with *any*
expression, so an identity positive is (id a, exp e1) vs (id a, exp e2) and an expression
positive is (id a, exp e) vs (id b, exp e):

- **images**: :class:`~facemodel.evaluation.normal_render.NormalRenderer` normal maps,
  64 x 64 (paper: 224). On one CPU core 64 px keeps rendering at ~1.3 ms and the network
  at ~0.3 ms per face, so a model's 20,200 decoupling faces (n = m = 100, both factors)
  are scored in ~40 s. The identity net sees the face region (landmark box x 1.3, ~3 mm
  per pixel); the expression net a tighter crop (x 0.9, ~2 mm per pixel), which resolved
  subtle expressions better in our trials.
- **network**: ResNet-18 topology (7x7/2 stem, 3x3/2 max-pool, 4 stages of 2 basic
  blocks, global average pool, linear to 128, L2 normalisation) with base width 16 instead
  of 64 (``width``; 0.7 M instead of 11 M parameters, ~16x fewer FLOPs). Width 32 and
  96 px inputs were tried and did not score better at the same CPU time.
- **training data** (train split only): identity classes are the dataset's train
  identities (ICT identity-PCA weights); expression classes are ``expression_classes``
  *diverse* blendshape vectors of the train meshes (farthest-point sampling,
  :func:`diverse_expressions`) plus ``natural_expression_classes`` random ones, each
  rendered on ``identities_per_expression`` train identities; each identity also gets a
  few random train expressions. Two expression classes serve as each other's negatives
  only when they visibly differ (:func:`expressions_differ`: >= 3 mm apart and >= 50% of
  the larger one's displacement, so one expression at two intensities is not a negative,
  like the paper's categorical labels).
- **loss**: triplet loss, margin 0.2, on P = 16 classes x K = 4 images batches:
  batch-hard mining for identity, batch-all for expression (batch-hard collapsed the
  expression embedding to a point).
- **distance**: Euclidean distance between the unit-length embeddings (0..2).
- **threshold**: on the *val* split's identities and expressions (never trained on),
  equally many positive and negative pairs, the threshold of best accuracy with FAR < 10%
  (:func:`choose_threshold`); accuracy, FAR and true-acceptance rate are stored.

Measured (one CPU core, ICT 4D seed 0, full setting, 2026-11-26): training 6.8 min in all
(2.9 min of it rendering 270 identities; identity net 2,000 steps, 1.4 min; expression net
4,000 steps, 3.0 min); identity net val accuracy 99.88% at FAR 0.23% (threshold 0.441);
expression net val accuracy 89.8% at FAR 7.7% (threshold 0.819). The paper: 98.66% / 1.21%
and 84.2% / 8.03%. On the ground-truth generator (every test identity, 40 visibly different
test expressions, n = m = 100) these nets judge 96.2-98.1% of the identity pairs and
94.7-97.0% of the expression pairs "same" over seeds 0-3 (96.5 / 96.3 with seed 0). The
first full setting (identity net 600 steps, expression net 2,000) scored 92.3 / 92.3 with seed
0: its identity threshold (0.402) sat just above the validation positives and rejected
same-identity pairs with two strong expressions, and the longer-trained expression net sets
its threshold further out at the same FAR rule.

Limitation: a subtle (near-neutral) expression rendered on two different faces is often
*not* judged the same, so the perfectly decoupled ground truth scores ~95% expression
decoupling on visibly different expressions (:func:`diverse_expressions` of the test meshes)
but 82.5% on the dataset's own expression distribution, which is mostly near-neutral
frames. The quick setting (24 train identities, ~1 min) is weaker still (~75-90%).

Example:
    >>> nets = load_or_train_decoupling_nets("~/.cache/facemodel/ict4d", ICTSource(ict_dir))
    >>> nets.identity.metrics          # {'threshold': ..., 'accuracy': ..., 'far': ..., ...}
    >>> e = nets.identity.embed(vertices)   # (N, V, 3) mm -> (N, 128)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, Field

from .._fs import atomic_dir
from .normal_render import DEFAULT_CROP, NormalRenderer
from .protocol import EvaluationError

__all__ = [
    "EMBEDDING_DIM",
    "ResNet18",
    "DecouplingNetsConfig",
    "EmbeddingNet",
    "DecouplingNets",
    "batch_hard_triplet_loss",
    "choose_threshold",
    "expression_distance_mm",
    "expression_features",
    "expressions_differ",
    "diverse_expressions",
    "render_pairs",
    "train_embedding",
    "train_decoupling_nets",
    "load_or_train_decoupling_nets",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128
FORMAT_NAME = "facemodel-decoupling-nets"
FORMAT_VERSION = 1
FACTORS = ("identity", "expression")


# ---------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 topology (He et al. 2016) with a width multiplier, as an embedding network.

    Args:
        width: channels of the first stage (64 in ResNet-18; stages use width x 1, 2, 4, 8).
        dim: embedding size (128 in the paper).

    Input (B, 3, S, S) normal maps in [0, 1]; output (B, dim) unit vectors.
    """

    def __init__(self, width: int = 16, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.width, self.dim = int(width), int(dim)
        w = self.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], w
        for stage, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            blocks += [_BasicBlock(cin, cout, 1 if stage == 0 else 2), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, self.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(images * 2.0 - 1.0))
        return F.normalize(self.fc(x.mean((2, 3))), dim=1)


# ---------------------------------------------------------------------------------------
# loss and threshold
# ---------------------------------------------------------------------------------------
def _pairwise_distance(e: torch.Tensor) -> torch.Tensor:
    d2 = (2.0 - 2.0 * e @ e.T).clamp_min(0.0)  # unit vectors
    return (d2 + 1e-12).sqrt()


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    *,
    mining: str = "hard",
    negative_ok: torch.Tensor | None = None,
    positive_ok: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triplet loss of unit embeddings over all anchors of a P x K batch (Hermans et al. 2017).

    ``mining="hard"`` (batch-hard): for each anchor the farthest sample of its class and the
    nearest sample of another class, loss ``mean(relu(d_ap - d_an + margin))``.
    ``mining="all"`` (batch-all): every (anchor, positive, negative) triplet of the batch,
    averaged over the triplets that still violate the margin; more stable when classes are
    hard to tell apart (batch-hard can then collapse all embeddings to one point).

    Args:
        embeddings: (B, D) unit vectors.
        labels: (B,) int class of each row; the batch needs >= 2 classes, one with >= 2 rows.
        margin: triplet margin in embedding distance units.
        mining: ``"hard"`` or ``"all"``.
        negative_ok: optional (B, B) bool; pairs of different classes where it is false are
            not used as negatives (e.g. two expression classes too similar to tell apart).
        positive_ok: optional (B, B) bool; pairs of different classes where it is true are
            used as positives (e.g. two expressions within a tolerance of each other).
    """
    d = _pairwise_distance(embeddings)
    same = labels[:, None] == labels[None, :]
    if positive_ok is not None:
        same = same | positive_ok
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same if negative_ok is None else ~same & negative_ok
    if mining == "hard":
        d_ap = d.masked_fill(~pos, -1.0).amax(1)
        d_an = d.masked_fill(~neg, float("inf")).amin(1)
        ok = (d_ap >= 0) & torch.isfinite(d_an)
        if not ok.any():
            raise EvaluationError("a triplet batch needs >= 2 classes, one of them with >= 2 samples")
        return F.relu(d_ap - d_an + margin)[ok].mean()
    if mining == "all":
        mask = pos[:, :, None] & neg[:, None, :]
        if not mask.any():
            raise EvaluationError("a triplet batch needs >= 2 classes, one of them with >= 2 samples")
        t = F.relu(d[:, :, None] - d[:, None, :] + margin)[mask]
        return t.sum() / (t > 1e-12).sum().clamp_min(1)
    raise EvaluationError(f"mining must be 'hard' or 'all', got {mining!r}")


def choose_threshold(positive: np.ndarray, negative: np.ndarray, *, max_far: float = 0.10) -> dict:
    """Distance threshold with the best accuracy on balanced pairs and FAR < ``max_far``.

    A pair is judged "same" when its distance is < threshold. Accuracy is the mean of the
    true-acceptance rate (positives below) and the true-rejection rate (negatives at or
    above), i.e. the accuracy on a set with equally many positive and negative pairs; FAR is
    the fraction of negatives accepted. The threshold is placed midway between the two
    distances that bound the best cut.

    Returns:
        dict with ``threshold``, ``accuracy``, ``far``, ``tar`` (floats, rates in [0, 1]),
        ``positives``, ``negatives`` (pair counts).
    """
    pos = np.sort(np.asarray(positive, np.float64).ravel())
    neg = np.sort(np.asarray(negative, np.float64).ravel())
    if len(pos) == 0 or len(neg) == 0:
        raise EvaluationError("choose_threshold needs at least one positive and one negative pair distance")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise EvaluationError("pair distances contain NaN or infinite values")
    cuts = np.unique(np.concatenate([pos, neg, [np.inf]]))
    # threshold just above each cut value c: accept d <= c  (== d < midpoint to the next value)
    tar = np.searchsorted(pos, cuts, side="right") / len(pos)
    far = np.searchsorted(neg, cuts, side="right") / len(neg)
    acc = (tar + 1.0 - far) / 2
    # the "accept nothing" option (threshold below every distance)
    tar = np.concatenate([[0.0], tar])
    far = np.concatenate([[0.0], far])
    acc = np.concatenate([[0.5], acc])
    lower = np.concatenate([[-np.inf], cuts])
    upper = np.concatenate([cuts, [np.inf]])
    valid = far < max_far
    best = int(np.flatnonzero(valid)[np.argmax(acc[valid])])
    lo, hi = lower[best], upper[best]
    if not np.isfinite(lo):
        thr = float(cuts[0]) / 2 if cuts[0] > 0 else 0.0
    elif not np.isfinite(hi):
        thr = float(lo) + 1.0
    else:
        thr = float(lo + hi) / 2
    return {"threshold": thr, "accuracy": float(acc[best]), "far": float(far[best]), "tar": float(tar[best]),
            "positives": int(len(pos)), "negatives": int(len(neg))}  # fmt: skip


# ---------------------------------------------------------------------------------------
# expressions
# ---------------------------------------------------------------------------------------
def _generic_deltas(source, vertex_stride: int) -> np.ndarray:
    """(53, K*3) float32 blendshape displacements of the generic face on every stride-th vertex."""
    d = source.expression_shapes_mm - source.neutral_mm[None]
    return np.ascontiguousarray(d[:, ::vertex_stride].reshape(len(d), -1), dtype=np.float32)


def expression_features(weights: np.ndarray, source, *, vertex_stride: int = 6) -> np.ndarray:
    """(..., K, 3) float32 displacement (mm) of blendshape weights (..., 53) on every
    ``vertex_stride``-th vertex of the generic ICT face: what :func:`expressions_differ`
    compares."""
    w = np.asarray(weights, np.float32)
    out = w @ _generic_deltas(source, vertex_stride)
    return out.reshape(*w.shape[:-1], -1, 3)


def _max_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(-1)).max(-1)


def expression_distance_mm(a: np.ndarray, b: np.ndarray, source, *, vertex_stride: int = 4) -> np.ndarray:
    """Max-vertex distance (mm) between blendshape weights ``a`` and ``b`` (..., 53) on the
    generic ICT face (every ``vertex_stride``-th vertex): how far the two expressions move
    any point of the same face apart."""
    D = _generic_deltas(source, vertex_stride)
    diff = (np.asarray(a, np.float32) - np.asarray(b, np.float32)) @ D
    return np.sqrt((diff.reshape(*diff.shape[:-1], -1, 3) ** 2).sum(-1)).max(-1)


def expressions_differ(
    fa: np.ndarray, fb: np.ndarray, *, min_mm: float = 3.0, relative: float = 0.5
) -> np.ndarray:
    """Whether two expressions count as *different* (a valid negative pair).

    ``fa``, ``fb`` are :func:`expression_features` (broadcasting). Different means the
    max-vertex distance is at least ``min_mm`` **and** at least ``relative`` times the
    larger of the two expressions' own max displacement. The relative rule keeps one
    expression at two intensities (a smile at 100% and at 70%) from counting as two
    expressions, like the categorical labels (one label for all intensities of an emotion)
    the paper's expression network was trained with.
    """
    diff = _max_dist(fa, fb)
    mag = np.maximum(np.sqrt((fa**2).sum(-1)).max(-1), np.sqrt((fb**2).sum(-1)).max(-1))
    return (diff >= min_mm) & (diff >= relative * mag)


def diverse_expressions(
    weights: np.ndarray,
    source,
    count: int,
    *,
    candidates: int = 1500,
    vertex_stride: int = 6,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, float]:
    """Farthest-point sample of ``count`` visibly different expressions.

    Starts from the most neutral candidate and repeatedly adds the candidate farthest (in
    :func:`expression_distance_mm`) from those chosen.

    Args:
        weights: (N, 53) blendshape weights (e.g. one split's meshes).
        source: the :class:`~facemodel.data.ict.ICTSource` (generic blendshapes).
        count: how many to pick (<= N).
        candidates: random rows considered (bounds time and memory).
        vertex_stride: vertex subsampling of the distance.

    Returns:
        (indices into ``weights`` (count,), smallest pairwise distance among them in mm).
    """
    w = np.asarray(weights, np.float32)
    if w.ndim != 2 or len(w) < count or count < 2:
        raise EvaluationError(f"need >= {max(count, 2)} blendshape weight rows (N, 53) to pick {count} expressions, "
                              f"got shape {w.shape}")  # fmt: skip
    rng = rng or np.random.default_rng(0)
    cand = np.sort(rng.choice(len(w), size=min(candidates, len(w)), replace=False))
    if len(cand) < count:
        cand = np.arange(len(w))
    D = _generic_deltas(source, vertex_stride)
    disp = (w[cand] @ D).reshape(len(cand), -1, 3)  # (C, K, 3)
    mag = np.sqrt((disp**2).sum(-1)).max(-1)
    chosen = [int(np.argmin(mag))]
    dmin = np.full(len(cand), np.inf, np.float32)
    for _ in range(count - 1):
        last = disp[chosen[-1]]
        dmin = np.minimum(dmin, np.sqrt(((disp - last[None]) ** 2).sum(-1)).max(-1))
        chosen.append(int(np.argmax(dmin)))
    last = disp[chosen[-1]]
    dmin = np.minimum(dmin, np.sqrt(((disp - last[None]) ** 2).sum(-1)).max(-1))
    sel = np.asarray(chosen)
    sub = disp[sel]
    # smallest pairwise distance among the chosen ones
    smallest = np.inf
    for i in range(len(sel) - 1):
        smallest = min(smallest, float(np.sqrt(((sub[i + 1 :] - sub[i][None]) ** 2).sum(-1)).max(-1).min()))
    return cand[sel], float(smallest)


# ---------------------------------------------------------------------------------------
# rendering training / validation sets
# ---------------------------------------------------------------------------------------
def render_pairs(
    generator,
    renderers: NormalRenderer | dict[str, NormalRenderer],
    identity_weights: np.ndarray,
    expression_weights: np.ndarray,
    pairs: np.ndarray,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """uint8 normal maps (N, 3, S, S) of ICT meshes (identity i, expression e) per row of ``pairs``.

    Rows are grouped by identity, so each identity's deformation-transferred basis is
    computed once (~0.3 s). With a dict of renderers, returns a dict of image tensors (the
    meshes are decoded once for all of them).
    """
    single = isinstance(renderers, NormalRenderer)
    rs = {"": renderers} if single else dict(renderers)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    out = {k: torch.zeros(len(pairs), 3, r.size, r.size, dtype=torch.uint8) for k, r in rs.items()}
    for i in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == i)
        meshes = torch.from_numpy(generator.meshes(identity_weights[i], expression_weights[pairs[rows, 1]]))
        for k, r in rs.items():
            out[k][torch.from_numpy(rows)] = (r(meshes) * 255).round_().to(torch.uint8)
    return out[""] if single else out


def _plan(rng, n_ids: int, n_classes: int, per_class: int, n_extra: int, per_id: int) -> np.ndarray:
    """(N, 3) rows (identity, pool row, expression class or -1).

    Pool rows ``0..n_classes-1`` are the expression classes, each placed on ``per_class``
    distinct identities (spread evenly over the identities); rows ``n_classes..`` are extra
    random expressions, ``per_id`` of them per identity (identity-net samples only).
    """
    rows = []
    order, pos = rng.permutation(n_ids), 0
    for c in range(n_classes):
        take: list[int] = []
        while len(take) < per_class:
            if pos == len(order):
                order, pos = rng.permutation(n_ids), 0
            if int(order[pos]) not in take:
                take.append(int(order[pos]))
            pos += 1
        rows += [(i, c, c) for i in take]
    for i in range(n_ids):
        for e in rng.choice(n_extra, size=min(per_id, n_extra), replace=False):
            rows.append((i, n_classes + int(e), -1))
    return np.asarray(rows, np.int64).reshape(-1, 3)


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------
class DecouplingNetsConfig(BaseModel):
    """How the decoupling embedding networks are trained (defaults: the full setting).

    ``quick()`` returns the reduced setting used by ``--quick`` evaluations and tests.

    Expression classes are ``expression_classes`` diverse (farthest-point) plus
    ``natural_expression_classes`` random blendshape vectors of the split, each rendered on
    ``identities_per_expression`` identities; two classes serve as each other's negatives
    only when :func:`expressions_differ` (``negative_min_mm``, ``negative_relative``).
    """

    render_size: int = Field(64, ge=16, le=256, description="normal-map side in pixels (paper: 224)")
    identity_crop: float = Field(DEFAULT_CROP, gt=0, description="identity-net frame = landmark box x this")
    expression_crop: float = Field(0.9, gt=0, description="expression-net frame = landmark box x this")
    width: int = Field(16, ge=4, le=64, description="ResNet-18 base width (paper: 64)")
    embedding_dim: int = Field(EMBEDDING_DIM, ge=8)
    margin: float = Field(0.2, gt=0)
    identity_mining: str = Field("hard", pattern="^(hard|all)$")
    expression_mining: str = Field("all", pattern="^(hard|all)$")
    max_far: float = Field(0.10, gt=0, le=1, description="threshold keeps the validation FAR below this")
    negative_min_mm: float = Field(3.0, ge=0, description="expressions closer than this are never negatives")
    negative_relative: float = Field(0.5, ge=0, description="... nor closer than this x the larger one's size")
    same_max_mm: float = Field(0.0, ge=0, description="expression classes closer than this are positives of each other")
    train_identities: int | None = Field(None, ge=4, description="cap on train identities (None: all)")
    val_identities: int | None = Field(None, ge=2, description="cap on val identities (None: all)")
    expression_classes: int = Field(100, ge=2, description="diverse train expressions (expression-net classes)")
    natural_expression_classes: int = Field(100, ge=0, description="random train expressions (more classes)")
    identities_per_expression: int = Field(12, ge=2, description="identities each expression class is rendered on")
    expressions_per_identity: int = Field(8, ge=0, description="extra random expressions per identity (identity net)")
    val_expression_classes: int = Field(40, ge=2)
    val_natural_expression_classes: int = Field(20, ge=0)
    val_identities_per_expression: int = Field(6, ge=2)
    val_expressions_per_identity: int = Field(6, ge=2)
    val_pairs: int = Field(3000, ge=10, description="positive (and as many negative) validation pairs per net")
    steps: int = Field(4000, ge=1, description="optimisation steps of the expression net")
    identity_steps: int | None = Field(2000, ge=1, description="steps of the identity net (None: steps)")
    classes_per_batch: int = Field(16, ge=2)
    samples_per_class: int = Field(4, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "DecouplingNetsConfig":
        """The reduced setting (about a minute on one core): fewer identities, classes, steps."""
        base = dict(train_identities=24, val_identities=8, expression_classes=48, natural_expression_classes=16,
                    identities_per_expression=8, expressions_per_identity=6, val_expression_classes=30,
                    val_natural_expression_classes=10, val_identities_per_expression=4,
                    val_expressions_per_identity=4, val_pairs=1000, steps=400, identity_steps=250)  # fmt: skip
        base.update(overrides)
        return cls(**base)


# ---------------------------------------------------------------------------------------
# trained nets
# ---------------------------------------------------------------------------------------
@dataclass
class EmbeddingNet:
    """One trained embedding network with its renderer and threshold.

    Attributes:
        factor: ``"identity"`` or ``"expression"``.
        network: the :class:`ResNet18` (eval mode).
        renderer: the :class:`NormalRenderer` its inputs were drawn with.
        threshold: distance below which two faces are judged the same ``factor``.
        metrics: validation ``accuracy``, ``far``, ``tar``, pair counts, training details.
    """

    factor: str
    network: ResNet18
    renderer: NormalRenderer
    threshold: float
    metrics: dict = field(default_factory=dict)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
        """(N, D) embeddings of (N, 3, S, S) normal maps (float in [0, 1] or uint8)."""
        self.network.eval()
        out = []
        for s in range(0, len(images), chunk):
            x = images[s : s + chunk]
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            out.append(self.network(x))
        return torch.cat(out) if out else torch.zeros(0, self.network.dim)

    @torch.no_grad()
    def embed(self, vertices: torch.Tensor | np.ndarray, *, chunk: int = 256) -> torch.Tensor:
        """(N, D) embeddings of meshes (N, V, 3) in mm (template topology)."""
        v = torch.as_tensor(vertices)
        return torch.cat([self.embed_images(self.renderer(v[s : s + chunk])) for s in range(0, len(v), chunk)]) \
            if len(v) else torch.zeros(0, self.network.dim)  # fmt: skip

    @staticmethod
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise Euclidean distance of embeddings (broadcasting)."""
        return (a - b).norm(dim=-1)

    def same(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Bool: are the faces of embeddings ``a`` and ``b`` the same ``factor``?"""
        return self.distance(a, b) < self.threshold


@dataclass
class DecouplingNets:
    """The identity and expression :class:`EmbeddingNet` pair plus provenance metadata."""

    identity: EmbeddingNet
    expression: EmbeddingNet
    meta: dict = field(default_factory=dict)

    def __getitem__(self, factor: str) -> EmbeddingNet:
        if factor not in FACTORS:
            raise KeyError(f"factor must be one of {FACTORS}, got {factor!r}")
        return getattr(self, factor)

    @property
    def num_vertices(self) -> int:
        """Vertex count of the template topology the nets render."""
        return self.identity.renderer.num_vertices

    def fingerprint(self) -> str:
        """16 hex digits identifying these nets: their weights, thresholds and frames.

        Scores from nets with different fingerprints are not comparable (e.g. the cached
        records of ``python -m facemodel.training.select`` are rescored when it changes).
        """
        h = hashlib.sha256()
        for f in FACTORS:
            net = self[f]
            frame = json.dumps(net.renderer.metadata(), sort_keys=True, default=str)
            h.update(f"{f}:{net.threshold!r}:{frame}".encode())
            for k, v in sorted(net.network.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        """Per factor: threshold, validation accuracy, FAR, TAR (the supplement's table)."""
        keys = ("threshold", "accuracy", "far", "tar", "positives", "negatives")
        return {f: {k: self[f].metrics.get(k) for k in keys} for f in FACTORS}

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write ``meta.json``, ``identity.safetensors``, ``expression.safetensors`` and
        ``renderer.safetensors`` (template faces) into the folder ``path``, atomically.
        Each net's frame (:meth:`NormalRenderer.metadata`) is stored in ``meta.json``."""
        from safetensors.torch import save_file

        path = Path(path).expanduser()
        meta = dict(self.meta)
        meta.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION})
        meta["nets"] = {f: {"threshold": self[f].threshold, "width": self[f].network.width,
                            "embedding_dim": self[f].network.dim, "renderer": self[f].renderer.metadata(),
                            "metrics": self[f].metrics} for f in FACTORS}  # fmt: skip
        with atomic_dir(path, overwrite=overwrite) as tmp:
            for f in FACTORS:
                state = {k: v.detach().contiguous() for k, v in self[f].network.state_dict().items()}
                save_file(state, str(tmp / f"{f}.safetensors"))
            save_file({"faces": self.identity.renderer.faces.contiguous()}, str(tmp / "renderer.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DecouplingNets":
        """Load nets written by :meth:`save`.

        Raises:
            EvaluationError: missing or unreadable files, another format or version.
        """
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise EvaluationError(f"{str(path)!r} holds no decoupling nets (no meta.json); train them with "
                                  "load_or_train_decoupling_nets")  # fmt: skip
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT_NAME or int(meta.get("format_version", 0)) != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} v{meta.get('format_version')}, expected "
                                 f"{FORMAT_NAME!r} v{FORMAT_VERSION}")  # fmt: skip
            faces = load_file(str(path / "renderer.safetensors"))["faces"].long()
            nets = {}
            for f in FACTORS:
                info = meta["nets"][f]
                r = info["renderer"]
                renderer = NormalRenderer(faces, tuple(r["center_mm"]), float(r["pixels_per_mm"]), int(r["size"]),
                                          int(r["num_vertices"]))  # fmt: skip
                net = ResNet18(int(info["width"]), int(info["embedding_dim"]))
                net.load_state_dict(load_file(str(path / f"{f}.safetensors")), strict=True)
                net.eval()
                nets[f] = EmbeddingNet(f, net, renderer, float(info["threshold"]), dict(info.get("metrics", {})))
        except EvaluationError:
            raise
        except Exception as exc:
            raise EvaluationError(f"cannot load decoupling nets from {str(path)!r}: {exc}; delete the folder to "
                                  "retrain them") from exc  # fmt: skip
        meta = {k: v for k, v in meta.items() if k not in ("nets",)}
        return cls(nets["identity"], nets["expression"], meta)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def train_embedding(
    images: torch.Tensor,
    labels: np.ndarray,
    config: DecouplingNetsConfig,
    *,
    seed: int = 0,
    mining: str = "hard",
    relations: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    log_every: int = 0,
) -> tuple[ResNet18, list[float]]:
    """Train one :class:`ResNet18` with a triplet loss (:func:`batch_hard_triplet_loss`).

    Args:
        images: (N, 3, S, S) uint8 normal maps.
        labels: (N,) int class per image; -1 rows are ignored. Batches hold
            ``classes_per_batch`` classes x ``samples_per_class`` images (classes with fewer
            images are skipped).
        config: sizes, steps, learning rate.
        mining: ``"hard"`` or ``"all"``.
        relations: optional function of the P classes of a batch returning two (P, P) bool
            matrices ``(same, different)``: class pairs that count as the same (positives;
            e.g. expressions within a tolerance) and class pairs that may serve as negatives
            (e.g. :func:`expressions_differ`); pairs in neither are ignored. Default: each
            class is only the same as itself and different from all others.

    Returns:
        (the network in eval mode, loss of every step).
    """
    labels = np.asarray(labels, np.int64)
    P, K = config.classes_per_batch, config.samples_per_class
    members: dict[int, np.ndarray] = {}
    for c in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == c)
        if len(rows) >= 2:
            members[int(c)] = rows
    classes = np.asarray(sorted(members))
    if len(classes) < 2:
        raise EvaluationError(f"triplet training needs >= 2 classes with >= 2 images each, got {len(classes)}")
    P = min(P, len(classes))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = ResNet18(config.width, config.embedding_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, config.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps))
    )
    losses: list[float] = []
    net.train()
    for step in range(config.steps):
        cls = rng.choice(classes, size=P, replace=False)
        rows = np.concatenate([rng.choice(members[int(c)], size=K, replace=len(members[int(c)]) < K) for c in cls])
        x = images[torch.from_numpy(rows)].float() / 255.0
        y = torch.from_numpy(np.repeat(np.arange(P), K))
        pos_ok = neg_ok = None
        if relations is not None:
            same, diff = (torch.as_tensor(np.asarray(m, bool)) for m in relations(cls))  # (P, P) each
            pos_ok = same.repeat_interleave(K, 0).repeat_interleave(K, 1)
            neg_ok = diff.repeat_interleave(K, 0).repeat_interleave(K, 1)
        loss = batch_hard_triplet_loss(net(x), y, config.margin, mining=mining, negative_ok=neg_ok, positive_ok=pos_ok)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            log.info("step %d/%d loss %.4f", step + 1, config.steps, float(np.mean(losses[-log_every:])))
    return net.eval(), losses


def _sample_pairs(rng, n_rows: int, same: Callable, diff: Callable, count: int, max_tries: int = 200) -> np.ndarray:
    """Up to ``count`` distinct (a, b) row pairs with a < b satisfying the predicate."""
    out: set[tuple[int, int]] = set()
    for _ in range(max_tries):
        a = rng.integers(n_rows, size=4 * count)
        b = rng.integers(n_rows, size=4 * count)
        ok = (a != b) & same(a, b) & diff(a, b)
        for x, y in zip(a[ok], b[ok]):
            out.add((int(min(x, y)), int(max(x, y))))
            if len(out) >= count:
                return np.asarray(sorted(out), np.int64)
    return np.asarray(sorted(out), np.int64).reshape(-1, 2)


def _validate(emb: torch.Tensor, plan: np.ndarray, factor: str, differ: np.ndarray, config: DecouplingNetsConfig,
              rng) -> tuple[dict, np.ndarray, np.ndarray]:
    """Balanced positive / negative validation pairs -> threshold and metrics.

    Identity: positive = same identity, different expression; negative = different
    identities. Expression: positive = same expression class on different identities;
    negative = two classes that differ (``differ``, class x class) on different identities.
    """
    ident, row, cls = plan[:, 0], plan[:, 1], plan[:, 2]
    n_rows = len(plan)
    if factor == "identity":
        other_row = lambda a, b: row[a] != row[b]  # noqa: E731
        pos = _sample_pairs(rng, n_rows, lambda a, b: ident[a] == ident[b], other_row, config.val_pairs)
        neg = _sample_pairs(rng, n_rows, lambda a, b: ident[a] != ident[b], other_row, config.val_pairs)
    else:
        labelled = cls >= 0
        pos = _sample_pairs(rng, n_rows, lambda a, b: labelled[a] & (cls[a] == cls[b]),
                            lambda a, b: ident[a] != ident[b], config.val_pairs)  # fmt: skip
        c = np.maximum(cls, 0)
        neg = _sample_pairs(rng, n_rows, lambda a, b: labelled[a] & labelled[b] & differ[c[a], c[b]],
                            lambda a, b: ident[a] != ident[b], config.val_pairs)  # fmt: skip
    n = min(len(pos), len(neg))
    if n == 0:
        raise EvaluationError(f"no {factor} validation pairs could be formed; the val split needs >= 2 identities "
                              "and >= 2 different expressions")  # fmt: skip
    pos, neg = pos[rng.permutation(len(pos))[:n]], neg[rng.permutation(len(neg))[:n]]
    dp = (emb[pos[:, 0]] - emb[pos[:, 1]]).norm(dim=1).numpy()
    dn = (emb[neg[:, 0]] - emb[neg[:, 1]]).norm(dim=1).numpy()
    return choose_threshold(dp, dn, max_far=config.max_far), dp, dn


def _render_split(generator, renderers, ids, exps, n_div, n_nat, per_cls, per_id, config, rng) -> dict:
    """Pick the split's expression classes and extra expressions, plan and render them."""
    source = generator.source
    t0 = time.perf_counter()
    div, min_sep = diverse_expressions(exps, source, n_div, rng=rng)
    rest = np.setdiff1d(np.arange(len(exps)), div)
    nat = rng.choice(rest, size=n_nat, replace=False)
    extra = rng.choice(len(exps), size=min(len(exps), max(4 * per_id, 32)), replace=False)
    classes = np.concatenate([div, nat])
    pool = np.concatenate([exps[classes], exps[extra]])
    plan = _plan(rng, len(ids), len(classes), per_cls, len(extra), per_id)
    feats = expression_features(exps[classes], source)
    differ = expressions_differ(feats[:, None], feats[None], min_mm=config.negative_min_mm,
                                relative=config.negative_relative)  # fmt: skip
    same = _max_dist(feats[:, None], feats[None]) < config.same_max_mm
    t1 = time.perf_counter()
    images = render_pairs(generator, renderers, ids, pool, plan[:, :2])
    t2 = time.perf_counter()
    off_diagonal = ~np.eye(len(classes), dtype=bool)
    info = {"identities": int(len(ids)), "images": int(len(plan)), "expression_classes": int(len(classes)),
            "diverse_min_separation_mm": min_sep, "class_pairs_that_differ": float(differ[off_diagonal].mean()),
            "seconds_expressions": t1 - t0, "seconds_render": t2 - t1}  # fmt: skip
    return {"images": images, "plan": plan, "same": same, "differ": differ, "info": info}


def train_decoupling_nets(
    generator,
    identities: dict[str, np.ndarray],
    expressions: dict[str, np.ndarray],
    config: DecouplingNetsConfig | None = None,
    *,
    meta: dict | None = None,
    progress: bool = False,
) -> DecouplingNets:
    """Train the identity and expression nets on ICT renders and pick their thresholds.

    Args:
        generator: an :class:`~facemodel.data.builder.ICTFaceGenerator` (ground truth).
        identities: ``{"train": (I, K), "val": (J, K)}`` ICT identity-PCA weights.
        expressions: ``{"train": (N, 53), "val": (M, 53)}`` blendshape weights to draw from.
        config: :class:`DecouplingNetsConfig` (default: the full setting).
        meta: extra provenance stored with the nets (e.g. the dataset checksum).
        progress: log progress at INFO level.

    Returns:
        :class:`DecouplingNets` with validation metrics in each net's ``metrics``.

    Raises:
        EvaluationError: too few identities or expressions for the configuration.
    """
    config = config or DecouplingNetsConfig()
    t_start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    renderers = {
        f: NormalRenderer.from_template(generator.template, size=config.render_size, crop=getattr(config, f"{f}_crop"))
        for f in FACTORS
    }
    specs = {
        "train": (config.train_identities, config.expression_classes, config.natural_expression_classes,
                  config.identities_per_expression, config.expressions_per_identity),
        "val": (config.val_identities, config.val_expression_classes, config.val_natural_expression_classes,
                config.val_identities_per_expression, config.val_expressions_per_identity),
    }  # fmt: skip
    arrays = {}
    for split, (cap, n_div, n_nat, per_cls, per_id) in specs.items():  # check everything before any work
        ids = np.asarray(identities.get(split, np.zeros((0, 0))), np.float64)
        exps = np.asarray(expressions.get(split, np.zeros((0, 53))), np.float32)
        if ids.ndim != 2 or len(ids) < 2:
            raise EvaluationError(f"the {split} split needs >= 2 identities (ICT PCA weights, (I, K)), got shape "
                                  f"{ids.shape}; use a dataset with more identities")  # fmt: skip
        if exps.ndim != 2 or exps.shape[1] != 53:
            raise EvaluationError(f"the {split} expressions must be (N, 53) ICT blendshape weights, got {exps.shape}")
        if cap is not None and len(ids) > cap:
            ids = ids[np.sort(rng.choice(len(ids), size=cap, replace=False))]
        if per_cls > len(ids):
            raise EvaluationError(f"{split}: each expression class is rendered on {per_cls} identities but only "
                                  f"{len(ids)} are available; lower the identities per expression or use more "
                                  "identities")  # fmt: skip
        if len(exps) < n_div + n_nat + 2:
            raise EvaluationError(f"{split}: {len(exps)} expressions (blendshape rows) available, need more than "
                                  f"{n_div + n_nat}; lower the expression class counts")  # fmt: skip
        arrays[split] = (ids, exps)
    sets = {}
    info: dict = {"config": config.model_dump()}
    for split, (cap, n_div, n_nat, per_cls, per_id) in specs.items():
        ids, exps = arrays[split]
        sets[split] = _render_split(generator, renderers, ids, exps, n_div, n_nat, per_cls, per_id, config, rng)
        info[split] = sets[split]["info"]
        if progress:
            i = sets[split]["info"]
            log.info("%s: %d images of %d identities, %d expression classes (diverse ones >= %.1f mm apart) in %.1f s",
                     split, i["images"], i["identities"], i["expression_classes"], i["diverse_min_separation_mm"],
                     i["seconds_expressions"] + i["seconds_render"])  # fmt: skip
    train, val = sets["train"], sets["val"]
    nets = {}
    for k, factor in enumerate(FACTORS):
        t0 = time.perf_counter()
        plan = train["plan"]
        if factor == "identity":
            cfg = config.model_copy(update={"steps": config.identity_steps or config.steps})
            net, losses = train_embedding(train["images"]["identity"], plan[:, 0], cfg, seed=config.seed + k,
                                          mining=config.identity_mining, log_every=250 if progress else 0)  # fmt: skip
        else:
            same, differ = train["same"], train["differ"]
            net, losses = train_embedding(train["images"]["expression"], plan[:, 2], config, seed=config.seed + k,
                                          mining=config.expression_mining,
                                          relations=lambda c: (same[np.ix_(c, c)], differ[np.ix_(c, c)]),
                                          log_every=250 if progress else 0)  # fmt: skip
        t1 = time.perf_counter()
        emb = EmbeddingNet(factor, net, renderers[factor], 0.0)
        e = emb.embed_images(val["images"][factor])
        val_rng = np.random.default_rng(config.seed + 10 + k)
        metrics, dp, dn = _validate(e, val["plan"], factor, val["differ"], config, val_rng)
        emb.threshold = metrics["threshold"]
        q = max(1, len(losses) // 10)
        metrics.update({
            "train_seconds": t1 - t0,
            "steps": len(losses),
            "loss_first": float(np.mean(losses[:q])),
            "loss_last": float(np.mean(losses[-q:])),
            "val_positive_distance_median": float(np.median(dp)),
            "val_negative_distance_median": float(np.median(dn)),
        })  # fmt: skip
        emb.metrics = metrics
        nets[factor] = emb
        if progress:
            log.info("%s net: %.1f s, loss %.3f -> %.3f, threshold %.3f, val accuracy %.2f%%, FAR %.2f%%, TAR %.2f%%",
                     factor, t1 - t0, metrics["loss_first"], metrics["loss_last"], metrics["threshold"],
                     100 * metrics["accuracy"], 100 * metrics["far"], 100 * metrics["tar"])  # fmt: skip
    info["seconds_total"] = time.perf_counter() - t_start
    info.update(meta or {})
    return DecouplingNets(nets["identity"], nets["expression"], info)


# ---------------------------------------------------------------------------------------
# dataset front end with a cache
# ---------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$FACEMODEL_CACHE/embeddings`` or ``~/.cache/facemodel/embeddings``."""
    base = os.environ.get("FACEMODEL_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "facemodel") / "embeddings"


def _dataset_arrays(root: Path) -> tuple[dict, dict, str]:
    from ..data.store import SPLITS, read_manifest

    manifest = read_manifest(root)
    try:
        with np.load(root / "identities.npz") as z:
            if "pca_weights" not in z.files:
                raise EvaluationError(f"{str(root)!r} has no identity PCA weights (identities.npz 'pca_weights'); "
                                      "the decoupling nets need an ICT 4D dataset "
                                      "(facemodel data build-ict)")  # fmt: skip
            pca, id_split = z["pca_weights"], z["split"]
        with np.load(root / "meshes.npz") as z:
            if "blendshapes" not in z.files:
                raise EvaluationError(f"{str(root)!r} has no blendshape weights (meshes.npz 'blendshapes'); "
                                      "the decoupling nets need an ICT 4D dataset "
                                      "(facemodel data build-ict)")  # fmt: skip
            blend, mesh_split = z["blendshapes"], z["split"]
    except OSError as exc:
        raise EvaluationError(f"cannot read the dataset at {str(root)!r}: {exc}") from exc
    ids = {s: pca[id_split == SPLITS.index(s)] for s in ("train", "val")}
    exps = {s: blend[mesh_split == SPLITS.index(s)] for s in ("train", "val")}
    return ids, exps, manifest.checksum


def load_or_train_decoupling_nets(
    dataset_root: str | os.PathLike,
    source,
    *,
    quick: bool = False,
    config: DecouplingNetsConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    progress: bool = False,
) -> DecouplingNets:
    """The decoupling nets for a dataset, trained once and cached.

    The cache folder is ``cache_dir / f"{checksum[:16]}-{quick|full}"``; cached nets are
    reused when their stored dataset checksum and configuration match.

    Args:
        dataset_root: an ICT 4D dataset folder (identity PCA weights and blendshapes needed).
        source: the :class:`~facemodel.data.ict.ICTSource` it was built from.
        quick: the reduced setting (:meth:`DecouplingNetsConfig.quick`).
        config: explicit configuration (overrides ``quick``).
        cache_dir: default :func:`default_cache_dir`.
        retrain: ignore a cached copy.
        progress: log progress at INFO level.
    """
    from ..data.builder import ICTFaceGenerator

    root = Path(dataset_root).expanduser()
    ids, exps, checksum = _dataset_arrays(root)
    config = config or (DecouplingNetsConfig.quick() if quick else DecouplingNetsConfig())
    if config == DecouplingNetsConfig.quick():
        tag = "quick"
    else:
        tag = "full" if config == DecouplingNetsConfig() else "custom"
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / f"{(checksum or 'nochecksum')[:16]}-{tag}"
    if not retrain and (folder / "meta.json").is_file():
        try:
            nets = DecouplingNets.load(folder)
            if nets.meta.get("dataset_checksum") == checksum and nets.meta.get("config") == config.model_dump():
                return nets
            log.info("cached decoupling nets at %s are for another dataset or configuration; retraining", folder)
        except EvaluationError as exc:
            log.warning("ignoring unreadable cached decoupling nets: %s", exc)
    nets = train_decoupling_nets(ICTFaceGenerator(source), ids, exps, config, progress=progress,
                                 meta={"dataset_checksum": checksum, "dataset_root": str(root),
                                       "tag": tag})  # fmt: skip
    try:
        nets.save(folder, overwrite=True)
    except OSError as exc:  # a read-only cache must not lose a finished training
        log.warning("could not cache the decoupling nets at %s: %s", folder, exc)
    return nets
