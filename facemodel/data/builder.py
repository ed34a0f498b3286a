"""Build the ICT 4D dataset: a stand-in for the paper's training data (§5.2) made from ICT.

Composition (defaults, ``size=30000``), mirroring the paper's mix of static and motion data:

- ``identities`` (default ``size // 100`` = 300) neutral faces with ICT identity weights
  ``w ~ N(0, I_100)``, split identity-disjointly 80/10/10 into train / val / test;
- every ICT blendshape *deformation-transferred* from the generic neutral to each identity
  (:class:`~facemodel.geometry.deformation_transfer.DeformationTransfer`), so that an
  expression deforms different faces differently;
- ``static`` subjects (8% of identities, like BU-3DFE): neutral plus the 6 emotions at 4
  intensities, all labelled;
- ``emotion`` sequences (like BU-4DFE): neutral -> apex -> neutral per emotion, with only the
  first, apex and last frame labelled; the number of such subjects is chosen so that about
  ``label_fraction`` (7%) of all meshes carry an expression label;
- ``free`` sequences for every identity, unlabelled: speech-like mouth motion, blinks and
  mixed AUs (like BP4D), filling the remaining budget;
- ``tracker`` sequences for every identity (``tracker_fraction`` of ``size``, taken from the
  free budget; 0 by default, as in the 0.3.x builds), unlabelled: tracker-like motion over
  all 53 shapes, each shape alone over its range and in random combinations
  (:meth:`ExpressionSampler.tracker_sequence`, shapes dealt from shuffled decks), so that the shapes the other kinds never move
  (gaze, jaw and mouth sideways, jaw forward, cheek puff) are exercised. Drawn from their own
  random stream, so that a build at 0 is the 0.3.x build, mesh for mesh;
- ``novel``: test identities only, expression combinations that the training generator
  never produces (for the sparse-reconstruction benchmark), unlabelled.

Every mesh records its identity, its 53 blendshape weights and (through its identity) the
100 identity PCA weights, so the generator can be re-run for ground truth
(:class:`ICTFaceGenerator`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, model_validator
from tqdm.auto import tqdm

from .._fs import atomic_dir
from ..errors import DatasetFormatError
from ..geometry.deformation_transfer import DeformationTransfer
from .expressions import (
    EMOTIONS,
    EMOTION_PROTOTYPES,
    EXPRESSION_LABELS,
    FREE_KINDS,
    ICT_BLENDSHAPES,
    NOVEL_COMBINATIONS,
    STATIC_INTENSITIES,
    SWEEP_FRAMES,
    ExpressionSampler,
)
from .ict import ICTSource
from .store import SPLITS, Manifest, write_dataset_files

__all__ = ["ICTDatasetConfig", "ICTFaceGenerator", "build_ict_dataset", "plan_ict_dataset", "shape_coverage", "KINDS"]

log = logging.getLogger(__name__)

KINDS = ("static", "emotion", "free", "novel", "tracker")


class ICTDatasetConfig(BaseModel):
    """Parameters of the ICT 4D dataset (all counts are meshes unless named otherwise)."""

    seed: int = Field(0, description="master seed; the dataset is a pure function of the config")
    size: int = Field(30_000, ge=200, description="target number of meshes")
    identities: int | None = Field(None, ge=10, description="number of identities (default size // 100)")
    identity_modes: int = Field(100, ge=1, le=100, description="ICT identity PCA modes used")
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_base: int | None = Field(None, ge=10, description="grow a smaller build: its first `split_base` identities "
                                   "keep the split they have in a build of `split_base` identities (same seed), so "
                                   "that a run on the smaller build never trained on this build's val/test identities; "
                                   "the added identities are split by `split_fractions`")
    label_fraction: float = Field(0.07, gt=0, lt=0.5, description="target fraction of expression-labelled meshes")
    static_fraction: float = Field(0.08, ge=0, le=1, description="fraction of identities with static scans")
    emotion_frames: int = Field(25, ge=5, description="frames per neutral->apex->neutral sequence")
    free_sequence_frames: int = Field(40, ge=5, description="maximum frames of a free-form sequence")
    novel_intensities: tuple[float, ...] = (0.6, 1.0)
    tracker_fraction: float = Field(0.0, ge=0, lt=0.9, description="fraction of the meshes that are "
                                    "tracker-like motion over all 53 shapes (0: the 0.3.x datasets)")
    offsets_dtype: str = Field("float16", pattern="^(float16|float32)$")

    @model_validator(mode="after")
    def _check(self) -> "ICTDatasetConfig":
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError("split_fractions must be three positive numbers summing to 1")
        if self.split_base is not None and self.split_base > self.num_identities:
            raise ValueError(f"split_base ({self.split_base}) must not exceed the number of identities ({self.num_identities})")
        return self

    @property
    def num_identities(self) -> int:
        return self.identities if self.identities is not None else max(10, self.size // 100)


@dataclass
class _Plan:
    """Per-mesh metadata of a planned dataset, grouped by identity (rows in identity order)."""

    identity_split: np.ndarray  # (I,) int8
    identity_weights: np.ndarray  # (I, K) float32
    identity: list[int] = field(default_factory=list)
    expression: list[int] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    frame: list[int] = field(default_factory=list)
    blendshapes: list[np.ndarray] = field(default_factory=list)
    combination: list[str] = field(default_factory=list)

    def add(self, ident: int, weights: np.ndarray, *, kind: str, label: int = -1, seq: int = -1, frame: int = -1,
            combination: str = "") -> None:  # fmt: skip
        self.identity.append(ident)
        self.expression.append(label)
        self.kind.append(KINDS.index(kind))
        self.sequence.append(seq)
        self.frame.append(frame)
        self.blendshapes.append(np.asarray(weights, dtype=np.float32))
        self.combination.append(combination)


def _allocate(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder split of ``total`` into parts proportional to ``fractions``."""
    raw = np.asarray(fractions) * total
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out))[: total - out.sum()]:
        out[i] += 1
    return out.tolist()


def _split(order: np.ndarray, fractions) -> np.ndarray:
    """(n,) int8 split (0 train, 1 val, 2 test) of n identities taken in ``order`` by the fractions."""
    per_split = _allocate(len(order), fractions)
    split = np.zeros(len(order), np.int8)
    split[order[per_split[0] : per_split[0] + per_split[1]]] = 1
    split[order[per_split[0] + per_split[1] :]] = 2
    return split


def plan_ict_dataset(config: ICTDatasetConfig) -> _Plan:
    """Draw every random choice of the dataset (identities, roles, expression weights).

    Pure function of ``config``: the same config gives the same plan.
    """
    rng = np.random.default_rng(config.seed)
    n_id = config.num_identities
    sampler = ExpressionSampler(np.random.default_rng(rng.integers(2**63)))
    weights = rng.standard_normal((n_id, config.identity_modes)).astype(np.float32)
    split = _split(rng.permutation(n_id), config.split_fractions)
    if config.split_base is not None and config.split_base < n_id:
        # the smaller build's identities (the same weights: the draw above extends its draw) keep
        # their split; the added ones are split by the fractions
        base = np.random.default_rng(config.seed)
        base.integers(2**63)
        base.standard_normal((config.split_base, config.identity_modes))
        split[: config.split_base] = _split(base.permutation(config.split_base), config.split_fractions)
        split[config.split_base :] = _split(rng.permutation(n_id - config.split_base), config.split_fractions)

    n_static_mesh = 1 + len(EMOTIONS) * len(STATIC_INTENSITIES)  # 25 per static subject
    n_static = round(config.static_fraction * n_id)
    labelled_target = config.label_fraction * config.size
    # each emotion sequence carries 3 labels (neutral, apex, neutral): granularity 3 meshes
    n_sequences = max(len(EMOTIONS), round((labelled_target - n_static * n_static_mesh) / 3))
    n_sequences = min(n_sequences, n_id * len(EMOTIONS))
    # distribute roles over splits in proportion, so val/test also hold labelled meshes
    static_ids: set[int] = set()
    emotion_sequences: dict[int, list[str]] = {}
    for s in range(3):
        ids = np.flatnonzero(split == s)
        ids = ids[rng.permutation(len(ids))]
        k_static = _allocate(n_static, config.split_fractions)[s]
        k_seq = _allocate(n_sequences, config.split_fractions)[s]
        static_ids.update(int(i) for i in ids[:k_static])
        # emotion subjects come from the split's other identities first; emotions cycle
        subjects = list(ids[k_static:]) + list(ids[:k_static])
        for j in range(k_seq):
            subject = int(subjects[(j // len(EMOTIONS)) % len(subjects)])
            emotion_sequences.setdefault(subject, []).append(EMOTIONS[j % len(EMOTIONS)])

    n_test = int((split == 2).sum())
    n_novel = n_test * len(NOVEL_COMBINATIONS) * len(config.novel_intensities)
    n_labelled = n_static * n_static_mesh + n_sequences * 3
    n_emotion_frames = n_sequences * config.emotion_frames
    n_tracker = round(config.tracker_fraction * config.size)
    n_free = config.size - n_static * n_static_mesh - n_emotion_frames - n_novel - n_tracker
    if n_free < n_id:
        raise DatasetFormatError(
            f"size={config.size} is too small for {n_id} identities with {n_labelled} labelled meshes; "
            "increase size or decrease identities"
        )
    free_per_id = _allocate(n_free, tuple([1.0 / n_id] * n_id))
    tracker_per_id = _allocate(n_tracker, tuple([1.0 / n_id] * n_id))
    # its own stream (only drawn from when tracker_fraction > 0): the other kinds stay as in 0.3.x
    tracker = ExpressionSampler(np.random.default_rng([config.seed, len(ICT_BLENDSHAPES)]))
    # shapes are dealt per split from shuffled decks of all 53, so every shape moves equally
    # often; single-shape sweeps (every third tracker sequence) have decks of their own
    decks = {(s, sweep): [] for s in range(3) for sweep in (False, True)}
    n_tracker_seq = 0

    def deal(s: int, sweep: bool, k: int) -> list[int]:
        deck = decks[s, sweep]
        while len(deck) < k:
            deck[:0] = tracker.rng.permutation(len(ICT_BLENDSHAPES)).tolist()
        return [deck.pop() for _ in range(k)]

    plan = _Plan(identity_split=split, identity_weights=weights)
    seq = 0
    neutral = EXPRESSION_LABELS.index("neutral")
    for i in range(n_id):
        if i in static_ids:
            plan.add(i, sampler.emotion("neutral", 1.0), kind="static", label=neutral)
            for label in EMOTIONS:
                for s in STATIC_INTENSITIES:
                    plan.add(i, sampler.emotion(label, s), kind="static", label=EXPRESSION_LABELS.index(label))
        if i in emotion_sequences:
            F = config.emotion_frames
            for label in emotion_sequences[i]:
                for f, w in enumerate(sampler.emotion_sequence(label, F)):
                    lab = neutral if f in (0, F - 1) else EXPRESSION_LABELS.index(label) if f == F // 2 else -1
                    plan.add(i, w, kind="emotion", label=lab, seq=seq, frame=f)
                seq += 1
        remaining = free_per_id[i]
        while remaining > 0:
            F = min(remaining, config.free_sequence_frames)
            kind = FREE_KINDS[int(sampler.rng.integers(len(FREE_KINDS)))]
            for f, w in enumerate(sampler.free_sequence(F, kind)):
                plan.add(i, w, kind="free", seq=seq, frame=f)
            seq += 1
            remaining -= F
        remaining = tracker_per_id[i]
        while remaining > 0:
            F = min(remaining, config.free_sequence_frames)
            sweep = n_tracker_seq % 3 == 0  # shapes alone one after the other, else 3-8 together
            k = max(1, F // SWEEP_FRAMES) if sweep else int(tracker.rng.integers(3, 9))
            shapes = deal(int(split[i]), sweep, k)
            n_tracker_seq += 1
            for f, w in enumerate(tracker.tracker_sequence(F, shapes, sweep=sweep)):
                plan.add(i, w, kind="tracker", seq=seq, frame=f)
            seq += 1
            remaining -= F
        if split[i] == 2:
            for name, combo in NOVEL_COMBINATIONS.items():
                base = np.zeros(len(ICT_BLENDSHAPES))
                for n, v in combo.items():
                    base[ICT_BLENDSHAPES.index(n)] = v
                for s in config.novel_intensities:
                    plan.add(i, np.clip(s * base, 0, 1), kind="novel", combination=name)
    return plan


class ICTFaceGenerator:
    """The ground-truth generator of the ICT 4D dataset.

    ``mesh = N(w_id) + sum_j e_j * D_j(w_id)`` where ``N`` is ICT's linear identity model
    and ``D_j(w_id)`` is blendshape ``j`` deformation-transferred onto that identity.

    Args:
        source: an :class:`ICTSource`.

    Example:
        >>> gen = ICTFaceGenerator(ICTSource(path))
        >>> v = gen.meshes(w_id, e)   # w_id (100,), e (M, 53) -> (M, 9409, 3) mm
    """

    def __init__(self, source: ICTSource) -> None:
        self.source = source
        tpl = source.face_template()
        self.template = tpl
        self._dt = DeformationTransfer(tpl.vertices, tpl.faces)
        shapes = source.expression_shapes_mm
        self._gradients = self._dt.gradients(shapes)  # (53, T, 3, 3)
        self._shift = self._dt.anchor_shift(shapes)  # (53, 3)

    def neutral(self, identity_weights: np.ndarray) -> np.ndarray:
        """(..., V, 3) float32 neutral faces (mm) of identity weights (..., K)."""
        return self.source.identity_mm(identity_weights)

    def expression_basis(self, identity_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neutral (V, 3) and deformation-transferred blendshape deltas (53, V, 3), mm, float64."""
        n = self.neutral(identity_weights).astype(np.float64)
        deformed = self._dt.transfer(n, self._gradients, self._shift)
        return n, deformed - n[None]

    def meshes(self, identity_weights: np.ndarray, blendshape_weights: np.ndarray) -> np.ndarray:
        """(M, V, 3) float32 meshes (mm) of one identity (K,) with M weight vectors (M, 53)."""
        n, deltas = self.expression_basis(identity_weights)
        e = np.atleast_2d(np.asarray(blendshape_weights, dtype=np.float64))
        out = n[None] + np.tensordot(e, deltas, axes=(1, 0))
        return out.astype(np.float32)


def build_ict_dataset(
    source: ICTSource | str | os.PathLike,
    out: str | os.PathLike,
    config: ICTDatasetConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Build the ICT 4D dataset into ``out`` (atomically) and return its manifest.

    Args:
        source: an :class:`ICTSource` or the path of a packed ICT-FaceKit folder.
        out: output folder; must not exist or be empty unless ``overwrite``.
        config: :class:`ICTDatasetConfig` (defaults: 30,000 meshes, seed 0).
        overwrite: replace an existing dataset folder.
        progress: show a progress bar.

    Raises:
        DataSourceError: the ICT folder is incomplete.
        OutputPathError: ``out`` exists or cannot be written.

    The build runs BLAS on one thread: the deformation transfer's float32 round-off (and so the
    float16 offsets and the checksum) would otherwise depend on the machine's thread count.
    """
    from threadpoolctl import threadpool_limits

    config = config or ICTDatasetConfig()
    src = source if isinstance(source, ICTSource) else ICTSource(source)
    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"), atomic_dir(out, overwrite=overwrite) as tmp:
        plan = plan_ict_dataset(config)
        gen = ICTFaceGenerator(src)
        tpl = gen.template
        N, V = len(plan.identity), tpl.num_vertices
        dtype = np.dtype(config.offsets_dtype)
        offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=dtype, shape=(N, V, 3))
        ident = np.asarray(plan.identity, np.int32)
        blend = np.stack(plan.blendshapes).astype(np.float32)
        starts = np.searchsorted(ident, np.arange(len(plan.identity_split) + 1))
        max_err = 0.0
        for i in tqdm(range(len(plan.identity_split)), desc="identities", disable=not progress, unit="id"):
            a, b = starts[i], starts[i + 1]
            meshes = gen.meshes(plan.identity_weights[i], blend[a:b]) - tpl.vertices[None]
            stored = meshes.astype(dtype)
            max_err = max(max_err, float(np.abs(stored.astype(np.float32) - meshes).max()))
            offsets[a:b] = stored
        offsets.flush()
        del offsets
        split = plan.identity_split[ident]
        expression = np.asarray(plan.expression, np.int16)
        kind = np.asarray(plan.kind, np.int8)
        counts = {
            "meshes": N,
            "identities": len(plan.identity_split),
            "expression_labelled": int((expression >= 0).sum()),
            "expression_label_fraction": float((expression >= 0).mean()),
            "per_label": {lab: int((expression == k).sum()) for k, lab in enumerate(EXPRESSION_LABELS)},
            "per_kind": {k: int((kind == j).sum()) for j, k in enumerate(KINDS)},
            "per_split": {
                s: {"meshes": int((split == j).sum()), "identities": int((plan.identity_split == j).sum()),
                    "expression_labelled": int(((split == j) & (expression >= 0)).sum())}
                for j, s in enumerate(SPLITS)
            },
            "sequences": int(max(plan.sequence) + 1),
        }  # fmt: skip
        manifest = Manifest(
            name="ict4d",
            seed=config.seed,
            num_meshes=N,
            num_vertices=V,
            num_identities=len(plan.identity_split),
            offsets_dtype=config.offsets_dtype,
            expression_labels=list(EXPRESSION_LABELS),
            kinds=list(KINDS),
            counts=counts,
            source={
                "name": "ICT-FaceKit (USC ICT), MIT licence",
                "repository": "ICT-VGL/ICT-FaceKit",
                "commit": src.upstream_commit,
                "region": "face area: vertices 0-9408, polygons 0-9229",
            },
            build={
                "config": config.model_dump(mode="json"),
                "blendshape_names": list(ICT_BLENDSHAPES),
                "emotion_prototypes_facs": {k: {str(a): s for a, s in v.items()} for k, v in EMOTION_PROTOTYPES.items()},
                "max_offset_rounding_error_mm": max_err,
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
        manifest = write_dataset_files(
            tmp,
            manifest,
            template={"vertices": tpl.vertices, "faces": tpl.faces, "landmarks": tpl.landmarks},
            meshes={
                "identity": ident,
                "expression": expression,
                "split": split.astype(np.int8),
                "kind": kind,
                "sequence": np.asarray(plan.sequence, np.int32),
                "frame": np.asarray(plan.frame, np.int32),
                "blendshapes": blend,
                "combination": np.asarray(plan.combination),
            },
            identities={
                "names": np.asarray([f"ict4d-{i:04d}" for i in range(len(plan.identity_split))]),
                "split": plan.identity_split,
                "pca_weights": plan.identity_weights,
            },
        )
        licence = src.root / "LICENSE"
        if licence.is_file():
            (tmp / "LICENSE-ICT-FaceKit").write_text(licence.read_text())
    log.info("built %s meshes into %s", N, out)
    return manifest


def shape_coverage(plan: _Plan, *, split: int = 0, threshold: float = 0.5) -> np.ndarray:
    """(53,) fraction of a split's meshes (default: train) in which each ICT shape's weight
    exceeds ``threshold``: the dataset's exercise of every shape (0.3.x builds: 15 shapes at 0)."""
    w = np.stack(plan.blendshapes)
    rows = plan.identity_split[np.asarray(plan.identity)] == split
    return (w[rows] > threshold).mean(0)
