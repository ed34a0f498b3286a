"""Identity spill: a label-free decoupling check.

When only the expression code of a face changes, the parts of the face that expressions do
not move (the skull, temples, the top of the nose bridge) should stay where they are. A model
whose expression code also carries identity moves them. :func:`identity_spill` measures how
far these *identity-only* vertices travel (mm) between faces that share identity (and noise)
codes but differ in their expression codes.

What the ICT data says (:func:`expression_motion`): **no** vertex of the ICT face area is
left exactly in place by every expression. On the generic neutral each of the 9,409 vertices
is moved by at least 0.36 mm by one of the 53 blendshapes (at weight 1); ``cheekSquint``,
``jawOpen``, the brow shapes and ``mouthSmile`` have small, smooth fall-offs that reach the
forehead and the back of the head, and the deformation-transferred blendshapes of other
identities move them a little more (median ratio 1.1). So the identity-only set is defined
with a tolerance: the vertices that no single blendshape, on the generic face or on the
deformation-transferred shapes of a few identities, moves by more than ``tol_mm`` (default
1.5 mm: about 610 vertices on the upper skull and temples, a patch in the middle of the
upper forehead, the top of the nose bridge and a little of the back of the neck). Consequently the ground-truth ICT generator does *not* have a
spill of exactly 0: combinations of blendshapes still move these vertices by a few tenths of
a millimetre (about 0.3 mm on average between random ICT 4D expressions), which is the floor
a perfectly decoupled model trained on this data reaches; compare models with that figure
(:class:`~facemodel.evaluation.protocol.ICTGroundTruth` gives it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .protocol import Codes, EvaluationError, ShapeModel

__all__ = ["expression_motion", "identity_only_vertices", "identity_spill", "DEFAULT_SPILL_TOLERANCE_MM"]

DEFAULT_SPILL_TOLERANCE_MM = 1.5


def _generator_of(source: Any):
    from ..data.builder import ICTFaceGenerator
    from ..data.ict import ICTSource

    if isinstance(source, ICTFaceGenerator):
        return source
    if isinstance(source, ICTSource):
        return ICTFaceGenerator(source)
    raise EvaluationError(
        f"expected an ICTSource or ICTFaceGenerator, got {type(source).__name__}; build one with "
        "facemodel.data.ict.ICTSource(path to the ict-facekit folder)"
    )


def expression_motion(source: Any, *, identities: int | np.ndarray = 8, seed: int = 0) -> np.ndarray:
    """Per-vertex displacement (mm) of the largest single ICT blendshape at weight 1.

    The maximum is taken over the 53 blendshapes of the generic neutral face and over their
    deformation transfers to ``identities`` other faces (the way the ICT 4D dataset makes
    its meshes, :class:`~facemodel.data.builder.ICTFaceGenerator`).

    Args:
        source: an :class:`~facemodel.data.ict.ICTSource` or an ``ICTFaceGenerator``.
        identities: number of random identities (ICT identity weights ~ N(0, I), drawn with
            ``seed``) or an (n, K) array of identity weights (e.g. a dataset's
            ``identity_table("pca_weights")`` rows); 0 = the generic face only.
        seed: seed of the random identities.

    Returns:
        (V,) float64 mm, V = 9,409 (the ICT face area, the dataset template's vertex order).

    Cost: ~0.6 s plus ~0.3 s per identity (deformation transfer).
    """
    gen = _generator_of(source)
    src = gen.source
    motion = np.linalg.norm(src.expression_shapes_mm.astype(np.float64) - src.neutral_mm[None], axis=-1).max(0)
    if isinstance(identities, (int, np.integer)) and not isinstance(identities, bool):
        if identities < 0:
            raise EvaluationError(f"identities must be >= 0, got {identities}")
        weights = np.random.default_rng(seed).standard_normal((int(identities), src.identity_deltas_mm.shape[0]))
    else:
        weights = np.atleast_2d(np.asarray(identities, np.float64))
        if weights.ndim != 2 or not np.isfinite(weights).all():
            raise EvaluationError("identities must be a count or a finite (n, K) array of ICT identity weights")
    for w in weights:
        _, deltas = gen.expression_basis(w)
        motion = np.maximum(motion, np.linalg.norm(deltas, axis=-1).max(0))
    return motion


def identity_only_vertices(
    source: Any, *, tol_mm: float = DEFAULT_SPILL_TOLERANCE_MM, identities: int | np.ndarray = 8, seed: int = 0
) -> np.ndarray:
    """Vertices that no ICT expression blendshape moves by more than ``tol_mm``.

    See :func:`expression_motion` (arguments ``source``, ``identities``, ``seed``) and the
    module docstring for why a tolerance is needed. With the defaults: 607 of the 9,409
    vertices (upper skull and temples, middle of the upper forehead, top of the nose bridge).

    Returns:
        (K,) int64 sorted vertex indices in the template's order.

    Raises:
        EvaluationError: ``tol_mm`` not positive, or no vertex within it.
    """
    if not np.isfinite(tol_mm) or tol_mm <= 0:
        raise EvaluationError(f"tol_mm must be a positive number of millimetres, got {tol_mm!r}")
    motion = expression_motion(source, identities=identities, seed=seed)
    idx = np.flatnonzero(motion <= tol_mm).astype(np.int64)
    if len(idx) == 0:
        raise EvaluationError(
            f"no vertex moves by less than {tol_mm} mm under every ICT blendshape (the least-moving one "
            f"moves {motion.min():.2f} mm); use a larger tol_mm"
        )
    return idx


@torch.no_grad()
def identity_spill(
    model: ShapeModel,
    vertices: np.ndarray | torch.Tensor,
    *,
    num_faces: int = 100,
    variants: int = 10,
    generator: torch.Generator | None = None,
    chunk: int = 256,
    motion: bool = True,
) -> dict[str, Any]:
    """How far identity-only vertices move when only the expression code changes (mm).

    ``num_faces`` faces are drawn from the model's prior; each gets ``variants`` new
    expression codes (its identity and noise codes kept), and every identity-only vertex's
    displacement between the face and each variant is measured (only those rows are
    decoded). A perfectly decoupled model moves them no more than the data's expressions
    do (the ICT ground truth: ~0.3 mm with the default vertex set, see the module docstring).

    Args:
        model: any :class:`ShapeModel`.
        vertices: (K,) vertex indices, e.g. :func:`identity_only_vertices`.
        num_faces, variants: n and m of the protocol (n x m pairs).
        generator: torch RNG for the codes.
        chunk: pairs decoded at a time.
        motion: also measure the mean displacement of *all* vertices for the same pairs
            (``motion_mm``) and ``ratio`` = spill / motion: a model whose expressions barely
            move anything has a small spill for the wrong reason (decodes whole meshes).

    Returns:
        ``{"mean_mm": mean displacement over pairs and vertices, "p95_mm": 95th percentile
        of the per-vertex displacements, "max_mm": largest, "per_pair_mm": (n*m,) float32
        tensor (mean over the vertices), "pairs": n*m, "vertices": K}``, plus
        ``"motion_mm"`` and ``"ratio"`` when ``motion``.

    Raises:
        EvaluationError: bad counts or vertex indices, a model output with NaNs or the
            wrong shape.
    """
    from .metrics import _check_count, _decode_checked

    num_faces = _check_count(num_faces, "num_faces")
    variants = _check_count(variants, "variants")
    chunk = _check_count(chunk, "chunk")
    idx = torch.as_tensor(np.asarray(vertices), dtype=torch.int64).reshape(-1)
    if len(idx) == 0:
        raise EvaluationError("vertices is empty; pass identity_only_vertices(...)")
    if int(idx.min()) < 0 or int(idx.max()) >= model.num_vertices:
        raise EvaluationError(f"vertex indices must lie in 0..{model.num_vertices - 1} (model {model.name!r}), "
                              f"got {int(idx.min())}..{int(idx.max())}")  # fmt: skip
    base = model.sample_codes(num_faces, generator=generator)
    new = model.sample_codes(num_faces * variants, generator=generator)
    rep = torch.arange(num_faces).repeat_interleave(variants)
    moved = Codes(base.identity[rep], new.expression, base.noise[rep])
    rows = None if motion else idx  # decode all vertices only when the overall motion is asked for
    a = torch.cat([_decode_checked(model, base[s : s + chunk], rows) for s in range(0, num_faces, chunk)])
    disp, overall = [], []
    for s in range(0, len(rep), chunk):
        dv = (_decode_checked(model, moved[s : s + chunk], rows) - a[rep[s : s + chunk]]).norm(dim=-1)
        disp.append(dv if rows is not None else dv[:, idx])
        if motion:
            overall.append(dv.mean(1))
    disp = torch.cat(disp)
    d = disp.double().numpy()
    out = {
        "mean_mm": float(d.mean()),
        "p95_mm": float(np.quantile(d, 0.95)),
        "max_mm": float(d.max()),
        "per_pair_mm": disp.mean(1),
        "pairs": int(len(rep)),
        "vertices": int(len(idx)),
    }
    if motion:
        m = torch.cat(overall).double()
        out["motion_mm"] = float(m.mean())
        out["ratio"] = out["mean_mm"] / out["motion_mm"] if out["motion_mm"] > 0 else float("nan")
    return out
