"""The decoupling metric of the paper (§5.3, "Decoupling"), for any :class:`ShapeModel`.

"To measure identity decoupling, we generate n random faces x_i = G(z_id^i, z_exp^i,
z_noise^i), and for each random face we fix the identity code and sample m faces
Y(x_i) = {G(z_id^i, z_exp^j, z_noise^j), j = 1..m}. We then use the embedding networks to
evaluate whether the original faces x_i and their corresponding samples in Y(x_i)
correspond to the same identity, and report the percentage of times the pairs were
classified as 'same'. We proceed analogously for expression decoupling. We set n = 100,
m = 100."

Identity: the m samples keep ``z_id^i`` and draw new expression and noise codes; a pair is
"same" when the identity net's embedding distance is below its threshold. Expression: the
samples keep ``z_exp^i`` and draw new identity and noise codes, judged by the expression
net. Codes come from the model's own prior (:meth:`ShapeModel.sample_codes`); meshes are
decoded in chunks without gradients, rendered (:mod:`.normal_render`) and embedded
(:mod:`.embedding`).

Reference points (full nets of 2026-11-26, ICT 4D test identities, n = m = 100, seed 0, ~45 s
per model on one core): the ground-truth generator scores 99.3% identity / 82.5% expression
with the test meshes' own expressions (mostly near-neutral frames, which the expression net
does not always match across faces) and 96.5% / 96.3% with 40 visibly different test
expressions (:func:`~facemodel.evaluation.embedding.diverse_expressions`; 96.2-98.1% /
94.7-97.0% over seeds 0-3); a model that ignores its identity (expression) code scores 3.4%
(16.9%). The first full nets (shorter training) gave 97.6 / 77.5, 92.3 / 92.3 and 3.2 (12.4).

Example:
    >>> nets = load_or_train_decoupling_nets(dataset_root, ICTSource(ict_dir))
    >>> r = decoupling_scores(FaceModelAdapter(model), nets, generator=torch.Generator().manual_seed(0))
    >>> r["identity"], r["expression"]      # percentages of pairs judged "same"
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .embedding import DecouplingNets, EmbeddingNet
from .protocol import Codes, EvaluationError, ShapeModel

__all__ = ["decoupling_scores", "factor_decoupling"]


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_model(model, num_vertices: int) -> None:
    if not isinstance(model, ShapeModel):
        raise EvaluationError(f"model must be a facemodel.evaluation.protocol.ShapeModel, got {type(model).__name__}; "
                              "wrap a FaceModel with FaceModelAdapter")  # fmt: skip
    if int(model.num_vertices) != num_vertices:
        raise EvaluationError(f"{model.name} has {model.num_vertices} vertices but the decoupling nets were trained on "
                              f"a {num_vertices}-vertex template; models must share the template topology")  # fmt: skip


@torch.no_grad()
def _decode(model: ShapeModel, codes: Codes, num_vertices: int) -> torch.Tensor:
    v = model.decode(codes)
    if not isinstance(v, torch.Tensor) or v.ndim != 3 or v.shape[0] != len(codes) or v.shape[1:] != (num_vertices, 3):
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise EvaluationError(f"{model.name}: decode returned {shape}, expected ({len(codes)}, {num_vertices}, 3) mm")
    return v.detach().float().cpu()


@torch.no_grad()
def factor_decoupling(
    model: ShapeModel,
    net: EmbeddingNet,
    factor: str,
    *,
    n: int = 100,
    m: int = 100,
    generator: torch.Generator | None = None,
    chunk: int = 200,
) -> dict:
    """Decoupling score of one factor (``"identity"`` or ``"expression"``).

    Returns:
        dict: ``score`` (% of the n*m pairs judged same), ``same`` (count), ``pairs``,
        ``threshold``, ``per_face`` (n per-anchor percentages), ``distance_median``.
    """
    if factor not in ("identity", "expression"):
        raise EvaluationError(f"factor must be 'identity' or 'expression', got {factor!r}")
    if not isinstance(net, EmbeddingNet):
        raise EvaluationError(f"net must be an EmbeddingNet (DecouplingNets.{factor}), got {type(net).__name__}")
    _check_model(model, net.renderer.num_vertices)
    n, m, chunk = _check_count(n, "n"), _check_count(m, "m"), _check_count(chunk, "chunk")
    V = net.renderer.num_vertices
    anchors = model.sample_codes(n, generator=generator)
    anchor_emb = net.embed(_decode(model, anchors, V))
    same = np.zeros(n, np.int64)
    dist = np.zeros(n * m, np.float32)
    # sample codes for all n*m pairs, then overwrite the kept factor with the anchor's
    per = max(1, chunk // m) if m <= chunk else 1
    for a0 in range(0, n, per):
        a1 = min(n, a0 + per)
        k = a1 - a0
        for s0 in range(0, m, chunk):
            s1 = min(m, s0 + chunk)
            mm = s1 - s0
            codes = model.sample_codes(k * mm, generator=generator)
            rows = torch.arange(a0, a1).repeat_interleave(mm)
            kept = getattr(anchors, factor)[rows]
            codes = Codes(kept, codes.expression, codes.noise) if factor == "identity" else \
                Codes(codes.identity, kept, codes.noise)  # fmt: skip
            emb = net.embed(_decode(model, codes, V))
            d = net.distance(emb, anchor_emb[rows]).numpy()
            ok = d < net.threshold
            same[a0:a1] += ok.reshape(k, mm).sum(1)
            idx = (np.arange(a0, a1)[:, None] * m + np.arange(s0, s1)[None]).ravel()
            dist[idx] = d
    total = n * m
    return {
        "factor": factor,
        "n": n,
        "m": m,
        "score": 100.0 * float(same.sum()) / total,
        "same": int(same.sum()),
        "pairs": total,
        "threshold": float(net.threshold),
        "per_face": (100.0 * same / m).tolist(),
        "distance_median": float(np.median(dist)),
    }


def decoupling_scores(
    model: ShapeModel,
    nets: DecouplingNets,
    *,
    n: int = 100,
    m: int = 100,
    generator: torch.Generator | None = None,
    chunk: int = 200,
) -> dict:
    """The paper's identity and expression decoupling percentages of ``model``.

    Args:
        model: any :class:`~facemodel.evaluation.protocol.ShapeModel` in the template topology.
        nets: trained :class:`~facemodel.evaluation.embedding.DecouplingNets`.
        n: random faces (anchors) per factor (paper: 100).
        m: samples per anchor sharing its identity (resp. expression) code (paper: 100).
        generator: torch RNG for the codes (reproducibility).
        chunk: faces decoded / rendered / embedded at once.

    Returns:
        dict with ``identity`` and ``expression`` (percent of pairs judged same),
        ``identity_same`` / ``expression_same`` (counts), ``pairs`` (n*m per factor),
        ``identity_threshold`` / ``expression_threshold``, ``identity_per_face`` /
        ``expression_per_face`` (n per-anchor percentages), median distances, ``n``, ``m``,
        ``seconds``.

    Raises:
        EvaluationError: ``model`` is not a ShapeModel, ``nets`` are not DecouplingNets,
            n or m is not a positive integer, or the model's topology differs from the nets'.
    """
    if not isinstance(nets, DecouplingNets):
        raise EvaluationError(f"nets must be DecouplingNets (load_or_train_decoupling_nets), got {type(nets).__name__}")
    _check_model(model, nets.num_vertices)
    n, m, chunk = _check_count(n, "n"), _check_count(m, "m"), _check_count(chunk, "chunk")
    t0 = time.perf_counter()
    out: dict = {"model": model.name, "n": n, "m": m, "pairs": n * m}
    for factor in ("identity", "expression"):
        r = factor_decoupling(model, nets[factor], factor, n=n, m=m, generator=generator, chunk=chunk)
        out[factor] = r["score"]
        out[f"{factor}_same"] = r["same"]
        out[f"{factor}_threshold"] = r["threshold"]
        out[f"{factor}_distance_median"] = r["distance_median"]
        out[f"{factor}_per_face"] = r["per_face"]
    out["seconds"] = time.perf_counter() - t0
    return out
