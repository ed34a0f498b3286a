"""Learn a model's blendshape map (ICT weights <-> expression codes) from a dataset.

    python -m facemodel.training.blendshape_map --model MODEL_DIR --data DATASET_DIR --out NEW_MODEL_DIR

The procedure (:func:`learn_blendshape_map`), on a dataset whose meshes carry their 53 ICT
blendshape weights (``meshes.npz`` ``blendshapes``, e.g. ICT 4D):

1. Identity codes. Default (``identity_codes="anchor"``): encode each identity's most
   neutral mesh (smallest weight sum) with :meth:`FaceModel.encode
   <facemodel.model.FaceModel.encode>`; every mesh of that identity uses that identity and
   noise code. Alternative (``"encoded"``): each mesh's own encoding.
2. ``to_code`` (weights -> expression code): minimise the decoded-mesh error end to end
   through the frozen generator. With anchors the map is applied relative to the anchor's
   own code, ``|| G(z_id_a, z_exp_a + to_code(e_i) - to_code(e_a), z_noise_a) - x_i ||^2`` (what
   ``FaceModel.add_expressions(face, weights)`` and ``facemodel animate --identity MESH`` do:
   an encoded face keeps everything its expression code holds), starting from
   ``to_code = mean anchor code``; with each mesh's own encoding the map is absolute,
   ``|| G(z_id_i, to_code(e_i), z_noise_i) - x_i ||^2``, starting from a ridge regression of the
   encoded codes on the weights. Candidates: linear, and linear plus a residual MLP; the
   lower validation mesh RMSE is kept (``kind="auto"``). ``to_code(0)`` is the mean anchor
   code, the rest pose of faces driven with absolute codes (``sample(expression=weights)``).
3. ``to_weights`` (code -> weights): regression on pairs (``to_code(e)``, e) for every
   training weight vector and (encoded expression code, true weights) for a few hundred
   encoded training meshes (so weights can be read from encoded / fitted faces);
   candidates: ridge (clamped to [0, 1]) and an MLP with a sigmoid output; the lower sum of
   three validation MAEs wins: the round trip on the validation split's weights, the round
   trip on random sparse tracker-like vectors (:func:`~facemodel.data.expressions.sparse_weights`,
   1-8 of any of the 53 shapes: what a tracker sends, unlike the training weights), and the
   read-back from encoded validation meshes.

4. Fallback shapes (``fallback``): shapes the training split never exercises (in our ICT
   build, 15 shapes whose weights never pass 0.03: gaze, jaw sideways/forward, mouth
   sideways, cheek puff; :func:`unexercised_shapes`) cannot be learned by the generator;
   the map ignores their weights and adds ICT-FaceKit's generic linear deltas for them
   (:func:`ict_fallback_deltas`, stored in the map: 1.7 MB for 15 shapes in float32).

The validation figures of every candidate are stored in the map's config
(``config.json`` ``expression_map.metrics``). Nothing here is imported by the SDK.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..blendshapes import ICT_NAMES
from ..data.dataset import FaceDataset
from ..data.expressions import sparse_weights
from ..errors import DatasetFormatError, DataSourceError, FaceModelError
from ..expression_map import ExpressionMap, ExpressionMapConfig

__all__ = ["learn_blendshape_map", "EncodedMeshes", "encode_meshes", "select_rows", "anchor_rows",
           "unexercised_shapes", "ict_fallback_deltas", "main"]

log = logging.getLogger(__name__)
KINDS = ("linear", "mlp")
#: the random stream of the tracker-like validation vectors: ``default_rng([seed, SPARSE_STREAM])``
#: (benchmarks/bench_animate.py draws its own, ``[seed, 2026]``)
SPARSE_STREAM = 4053


@dataclass
class EncodedMeshes:
    """Meshes of one split with their true weights and their codes from ``model.encode``."""

    rows: np.ndarray  # (N,) positions in the split's FaceDataset
    vertices: torch.Tensor  # (N, V, 3) mm
    weights: torch.Tensor  # (N, 53) ICT order
    codes: torch.Tensor  # (N, D) full codes
    identity: np.ndarray  # (N,) global identity index
    seconds: float  # encoding time
    subset: torch.Tensor | None = None  # vertex indices when ``vertices`` holds only those
    #: (N, 53) weights of the mesh whose codes ``codes`` are (its identity's anchor): the map is
    #: then applied relative to them, ``z_exp = codes_exp + to_code(w) - to_code(reference)``
    reference_weights: torch.Tensor | None = None


def select_rows(ds: FaceDataset, n: int, seed: int) -> np.ndarray:
    """``n`` random rows of a split (all when it has fewer), sorted."""
    if n >= len(ds):
        return np.arange(len(ds))
    return np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))


def encode_meshes(model, ds: FaceDataset, rows: np.ndarray, *, batch_size: int = 64, progress: bool = True,
                  desc: str = "encode", **encode_kwargs) -> EncodedMeshes:  # fmt: skip
    """Encode dataset rows with ``model.encode`` (batched) and collect their true weights."""
    if "blendshapes" not in ds._meta:
        raise DatasetFormatError(f"{str(ds.root)!r} has no per-mesh blendshape weights (meshes.npz 'blendshapes'); "
                                 "a blendshape map is learned from a dataset that has them, such as ICT 4D")  # fmt: skip
    verts = torch.from_numpy(ds.vertices(rows))
    codes = []
    t0 = time.perf_counter()
    for a in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, unit="batch"):
        codes.append(model.encode(verts[a : a + batch_size], **encode_kwargs).codes.cpu())
    seconds = time.perf_counter() - t0
    w = torch.from_numpy(np.asarray(ds.meta("blendshapes")[rows], np.float32)).clamp(0, 1)
    return EncodedMeshes(rows, verts, w, torch.cat(codes), np.asarray(ds.meta("identity")[rows]), seconds)


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in), b (out,) minimising ||x W^T + b - y||^2 + lam ||W||^2 (float64)."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    a = xc.T @ xc + lam * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    W = torch.linalg.solve(a, xc.T @ yc).T
    return W.float(), (my - W @ mx).float()


def _rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) root-mean-square vertex distance, mm."""
    return ((a - b) ** 2).sum(-1).mean(-1).sqrt()


def map_codes(model, emap: ExpressionMap, data: EncodedMeshes, rows=slice(None)) -> torch.Tensor:
    """Expression codes the map gives ``data``'s meshes: absolute, or relative to the reference."""
    z = emap.to_code(data.weights[rows])
    if data.reference_weights is not None:
        sl = model.code_slices["expression"]
        z = data.codes[rows, sl] + z - emap.to_code(data.reference_weights[rows])
    return z


def _decode_with(model, codes: torch.Tensor, z_exp: torch.Tensor) -> torch.Tensor:
    sl = model.code_slices["expression"]
    z = codes.clone()
    z[:, sl] = z_exp
    return model(z)


@torch.no_grad()
def mesh_rmse(model, enc: EncodedMeshes, z_exp: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) RMSE (mm, every vertex) of the meshes decoded with ``z_exp`` in place of the encoded expression codes."""
    out = [_rmse(_decode_with(model, enc.codes[a : a + batch_size], z_exp[a : a + batch_size]),
                 enc.vertices[a : a + batch_size]) for a in range(0, len(enc.codes), batch_size)]  # fmt: skip
    return torch.cat(out)


def _fit_to_code(model, emap: ExpressionMap, train: EncodedMeshes, *, epochs: int, lr: float, batch_size: int,
                 num_vertices: int, code_reg: float, seed: int, progress: bool) -> list[float]:  # fmt: skip
    """End-to-end training of ``emap.to_code`` through the frozen generator (vertex subset rows)."""
    g = torch.Generator().manual_seed(seed)
    V = model.num_vertices
    if train.subset is not None:  # the vertices were subsampled when loaded
        sub, target = train.subset, train.vertices.reshape(len(train.codes), -1)
    else:
        sub = torch.arange(V) if num_vertices >= V else torch.randperm(V, generator=g)[:num_vertices].sort().values
        target = train.vertices[:, sub].reshape(len(train.codes), -1)
    W2, b2 = model.generator.output_rows(sub)  # (3K, H), (3K,)
    W2, b2 = W2.detach(), b2.detach()
    hidden = model.generator.hidden  # codes -> (B, H) features of the frozen generator
    tpl = model.template[sub].reshape(-1)
    sl = model.code_slices["expression"]
    params = [p for n, p in emap.named_parameters() if n.startswith("code_")]
    opt = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = math.ceil(len(train.codes) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return _train_loop(model, emap, train, opt, sched, g, epochs, batch_size, sl, hidden, W2, b2, tpl, target,
                           code_reg, progress)  # fmt: skip
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _train_loop(model, emap, train, opt, sched, g, epochs, batch_size, sl, hidden, W2, b2, tpl, target, code_reg,
                progress):  # fmt: skip
    history = []
    for _ in tqdm(range(epochs), desc="weights->code", disable=not progress, unit="epoch"):
        perm = torch.randperm(len(train.codes), generator=g)
        total = 0.0
        for a in range(0, len(perm), batch_size):
            idx = perm[a : a + batch_size]
            z = train.codes[idx].clone()
            ze = map_codes(model, emap, train, idx)
            z = torch.cat([z[:, : sl.start], ze, z[:, sl.stop :]], 1)
            pred = hidden(z) @ W2.T + b2 + tpl
            loss = ((pred - target[idx]) ** 2).mean() * 3  # mean squared vertex distance, mm^2
            if code_reg:
                loss = loss + code_reg * (ze**2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(perm))
    return history


def _fit_to_weights(emap: ExpressionMap, codes: torch.Tensor, weights: torch.Tensor, *, steps: int, lr: float,
                    ridge: float, seed: int) -> None:  # fmt: skip
    """Regression of weights on expression codes into ``emap``'s ``weights_*`` layers."""
    if emap.weights_linear is not None:
        W, b = _ridge(codes, weights, ridge)
        with torch.no_grad():
            emap.weights_linear.weight.copy_(W)
            emap.weights_linear.bias.copy_(b)
        return
    torch.manual_seed(seed)
    mu, sd = codes.mean(0), codes.std(0).clamp_min(1e-6)
    x = (codes - mu) / sd
    mlp = emap.weights_mlp
    with torch.no_grad():
        mlp.output_layer.bias.copy_(torch.logit(weights.mean(0).clamp(1e-3, 1 - 1e-3)))
    opt = torch.optim.Adam(mlp.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(len(x), 4096),), generator=g)
        loss = ((torch.sigmoid(mlp(x[idx])) - weights[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():  # fold the input standardisation into the first layer
        mlp.input_layer.bias.sub_(mlp.input_layer.weight @ (mu / sd))
        mlp.input_layer.weight.div_(sd)


def _all_weights(ds: FaceDataset) -> torch.Tensor:
    return torch.from_numpy(np.asarray(ds.meta("blendshapes"), np.float32)).clamp(0, 1)


def unexercised_shapes(ds: FaceDataset, below: float = 0.1) -> list[str]:
    """ICT names whose weight stays under ``below`` on every mesh of ``ds`` (the training
    split): shapes the generator never saw and cannot make."""
    w = ds.meta("blendshapes")
    return [n for n, mx in zip(ICT_NAMES, w.max(0)) if mx < below]


def ict_fallback_deltas(source, names: Sequence[str], num_vertices: int) -> dict[str, torch.Tensor]:
    """name -> (V, 3) mm: ICT-FaceKit's generic linear deltas (shape minus neutral) of ``names``.

    Args:
        source: :class:`~facemodel.data.ict.ICTSource`.
        names: ICT blendshape names.
        num_vertices: the model's V; must be ICT's face mesh (the ICT 4D dataset's topology).

    Raises:
        DatasetFormatError: the model's template is not ICT's topology.
    """
    shapes = source.expression_shapes_mm
    if shapes.shape[1] != num_vertices:
        raise DatasetFormatError(f"fallback shapes need the model on ICT's mesh ({shapes.shape[1]} vertices), the model "
                                 f"has {num_vertices}; pass --fallback none")  # fmt: skip
    order = source.expression_names
    missing = [n for n in names if n not in order]
    if missing:
        raise DatasetFormatError(f"the ICT data has no shapes {missing}")
    neutral = source.neutral_mm
    return {n: torch.from_numpy(np.asarray(shapes[order.index(n)] - neutral, dtype=np.float32)) for n in names}


def anchor_rows(ds: FaceDataset) -> dict[int, int]:
    """Global identity -> row (in ``ds``) of its most neutral mesh (smallest weight sum)."""
    if "blendshapes" not in ds._meta:
        raise DatasetFormatError(f"{str(ds.root)!r} has no per-mesh blendshape weights (meshes.npz 'blendshapes'); "
                                 "a blendshape map is learned from a dataset that has them, such as ICT 4D")  # fmt: skip
    total = np.asarray(ds.meta("blendshapes")).sum(1)
    ident = np.asarray(ds.meta("identity"))
    order = np.lexsort((total, ident))  # by identity, then weight sum
    first = np.r_[True, ident[order][1:] != ident[order][:-1]]
    return {int(ident[r]): int(r) for r in order[first]}


def _encode(model, ds, rows, cache: dict | None, *, desc: str, batch_size: int, progress: bool, **kw) -> EncodedMeshes:
    """``encode_meshes`` with a dict cache keyed by split and rows."""
    import hashlib

    key = f"{ds.split}:{hashlib.sha1(np.asarray(rows, np.int64).tobytes()).hexdigest()[:16]}"
    if cache is not None and key in cache:
        hit = cache[key]
        w = torch.from_numpy(np.asarray(ds.meta("blendshapes")[rows], np.float32)).clamp(0, 1)
        return EncodedMeshes(np.asarray(rows), torch.from_numpy(ds.vertices(rows)), w, hit["codes"],
                             np.asarray(ds.meta("identity")[rows]), hit["seconds"])  # fmt: skip
    out = encode_meshes(model, ds, rows, batch_size=batch_size, progress=progress, desc=desc, **kw)
    if cache is not None:
        cache[key] = {"codes": out.codes, "seconds": out.seconds}
    return out


def _anchored(model, ds, rows, anchors: EncodedMeshes, num_vertices: int | None, seed: int) -> EncodedMeshes:
    """Meshes of ``rows`` paired with the codes of their identity's anchor (most neutral) mesh.
    With ``num_vertices`` only that many random vertices are kept (training saves memory)."""
    code_of = {int(i): anchors.codes[k] for k, i in enumerate(anchors.identity)}
    ident = np.asarray(ds.meta("identity")[rows])
    codes = torch.stack([code_of[int(i)] for i in ident])
    w = torch.from_numpy(np.asarray(ds.meta("blendshapes")[rows], np.float32)).clamp(0, 1)
    V = model.num_vertices
    sub = None
    if num_vertices is not None and num_vertices < V:
        sub = torch.randperm(V, generator=torch.Generator().manual_seed(seed))[:num_vertices].sort().values
    chunks = []
    for a in range(0, len(rows), 1024):
        v = torch.from_numpy(ds.vertices(rows[a : a + 1024]))
        chunks.append(v if sub is None else v[:, sub])
    ref_of = {int(i): anchors.weights[k] for k, i in enumerate(anchors.identity)}
    ref = torch.stack([ref_of[int(i)] for i in ident])
    return EncodedMeshes(np.asarray(rows), torch.cat(chunks), w, codes, ident, 0.0, sub, ref)


def learn_blendshape_map(
    model,
    dataset_root: str | os.PathLike,
    *,
    kind: str = "auto",
    inverse_kind: str = "auto",
    identity_codes: str = "anchor",
    train_meshes: int = 4000,
    val_meshes: int = 600,
    encoded_meshes: int = 500,
    encoded_val_meshes: int = 150,
    epochs: int = 25,
    lr: float | None = None,
    batch_size: int = 128,
    hidden: int = 64,
    num_vertices: int = 2000,
    ridge: float = 1e-3,
    code_reg: float = 0.0,
    inverse_steps: int = 1500,
    prefer_linear_within: float = 0.01,
    sparse_vectors: int = 2000,
    anchor_init: bool = False,
    seed: int = 0,
    encode_batch: int = 64,
    cache: dict | None = None,
    data: tuple[EncodedMeshes, EncodedMeshes] | None = None,
    fallback: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    **encode_kwargs,
):
    """Learn weights <-> expression code maps for ``model`` and attach the best (in place).

    Args:
        model: a :class:`~facemodel.model.FaceModel` with an ``expression`` factor.
        dataset_root: dataset folder whose meshes carry ICT blendshape weights (ICT 4D).
        kind: ``to_code`` map: ``"linear"``, ``"mlp"`` (linear + residual MLP) or
            ``"auto"`` (train both, keep the lower validation mesh RMSE; the linear map
            unless the MLP is lower by more than ``prefer_linear_within``, relative).
        inverse_kind: ``to_weights`` map: ``"linear"``, ``"mlp"`` or ``"auto"``.
        identity_codes: where each training mesh's identity and noise codes come from:
            ``"anchor"`` (default): the encoding of its identity's most neutral mesh, shared by
            all meshes of the identity (what animating a known face does; needs one encode
            per identity, and uses ``train_meshes`` meshes); ``"encoded"``: the mesh's own
            encoding (``encoded_meshes`` meshes; with an entangled generator the identity
            code already holds much of the expression).
        train_meshes, val_meshes: meshes of the train / val splits in the ``to_code`` loss
            and its validation (``"anchor"``).
        encoded_meshes, encoded_val_meshes: meshes encoded one by one with ``model.encode``
            (~0.25 s a mesh on one CPU thread): pairs for ``to_weights`` (reading weights
            from encoded faces) and the validation of that; the ``to_code`` data for
            ``identity_codes="encoded"``.
        epochs, lr, batch_size: end-to-end training of ``to_code`` (Adam, cosine schedule;
            lr default 0.01 linear, 0.003 MLP).
        hidden: hidden width of the MLPs.
        num_vertices: vertices (random subset) in the training loss; validation uses all.
        ridge: ridge penalty (relative to the sample count) of the linear fits.
        code_reg: penalty on the squared norm of the produced codes (keeps them in range).
        inverse_steps: Adam steps of the ``to_weights`` MLP.
        prefer_linear_within: relative margin an MLP must win by to be chosen over linear.
        sparse_vectors: random sparse tracker-like weight vectors whose round trip validates
            ``to_weights`` beside the validation split's (0: that split's only). The 0.4.0 map
            chose the MLP on the split alone (0.0148 round trip against the ridge's 0.0037, but
            read-back 0.029 against 0.040); on tracker-like vectors its round trip was 0.023.
        anchor_init: start ``to_code`` from the expression-anchoring map
            (:func:`~facemodel.training.anchoring.fit_expression_anchor`, refitted on the dataset
            with the run's seed) of a model trained with ``lambda_expression_anchor``, instead
            of the data's regression / the anchors' mean code; with ``epochs=0`` and
            ``kind="linear"`` the map *is* that one (the generator learned its expressions
            through it; end-to-end training on encoded anchors, whose identity error dominates
            the loss, moved 0.2.0's map away from it and doubled the error of the expression
            motion, docs/benchmarks.md).
        seed: seed of the mesh selection and of training.
        cache: a dict that keeps encodings between calls (same model and dataset).
        data: precomputed ``(train, val)`` meshes with identity/noise codes for ``to_code``
            (skips the selection; ``encoded_meshes=0`` skips the encodings).
        fallback: name -> (V, 3) mm linear deltas of shapes the map should apply directly
            instead of through the code (:func:`unexercised_shapes`, :func:`ict_fallback_deltas`);
            ``to_code`` ignores their weights.
        encode_kwargs: passed to ``model.encode`` (``reg``, ``max_iters``).

    Returns:
        ``model`` with the map attached (``model.expression_map``); the validation figures
        of each candidate are in ``model.config.expression_map.metrics``.
    """
    for name, value in (("kind", kind), ("inverse_kind", inverse_kind)):
        if value not in KINDS + ("auto",):
            raise FaceModelError(f"{name} must be 'linear', 'mlp' or 'auto', got {value!r}")
    if identity_codes not in ("anchor", "encoded"):
        raise FaceModelError(f"identity_codes must be 'anchor' or 'encoded', got {identity_codes!r}")
    if isinstance(sparse_vectors, bool) or not isinstance(sparse_vectors, int) or sparse_vectors < 0:
        raise FaceModelError(f"sparse_vectors must be an integer >= 0, got {sparse_vectors!r}")
    if "expression" not in model.code_slices:
        raise FaceModelError(f"the model has no 'expression' factor ({sorted(model.code_slices)})")
    t_start = time.perf_counter()
    model = model.float().cpu().eval()
    d_exp = model.config.generator.factor("expression").code_dim
    sl = model.code_slices["expression"]
    train_ds = FaceDataset(dataset_root, split="train")
    val_ds = FaceDataset(dataset_root, split="val")
    kw = dict(batch_size=encode_batch, progress=progress, **encode_kwargs)
    enc_train = enc_val = None
    if encoded_meshes > 0:
        enc_train = _encode(model, train_ds, select_rows(train_ds, encoded_meshes, seed), cache, desc="encode train", **kw)
        enc_val = _encode(model, val_ds, select_rows(val_ds, max(1, encoded_val_meshes), seed + 1), cache,
                          desc="encode val", **kw)  # fmt: skip
    encode_seconds = sum(e.seconds for e in (enc_train, enc_val) if e is not None)
    if data is not None:
        train, val = data
    elif identity_codes == "encoded":
        if enc_train is None:
            raise FaceModelError("identity_codes='encoded' needs encoded_meshes > 0")
        train, val = enc_train, enc_val
    else:
        anchors = []
        for ds, desc in ((train_ds, "encode train anchors"), (val_ds, "encode val anchors")):
            rows = np.array(sorted(anchor_rows(ds).values()))
            anchors.append(_encode(model, ds, rows, cache, desc=desc, **kw))
            encode_seconds += anchors[-1].seconds
        train = _anchored(model, train_ds, select_rows(train_ds, train_meshes, seed + 2), anchors[0], num_vertices, seed)
        val = _anchored(model, val_ds, select_rows(val_ds, val_meshes, seed + 3), anchors[1], None, seed)
    log.info("data ready in %.1f s (encoding %.1f s)", time.perf_counter() - t_start, encode_seconds)
    relative = train.reference_weights is not None
    if anchor_init:  # the training run's own weights -> code map (lambda_expression_anchor)
        from .anchoring import fit_expression_anchor

        emb, _ = fit_expression_anchor(train_ds, d_exp, seed=int(((model.config.training or {}).get("config") or {}).get("seed", 0)))
        W0, b0 = emb.matrix.T.clone(), -(emb.mean @ emb.matrix)
    elif relative:  # no per-mesh expression code to regress on: start from the anchors' mean code
        W0, b0 = torch.zeros(d_exp, len(ICT_NAMES)), train.codes[:, sl].mean(0)
    else:
        W0, b0 = _ridge(train.weights, train.codes[:, sl], ridge)

    metrics: dict = {
        "data": {"dataset": str(Path(dataset_root).expanduser()), "checksum": train_ds.manifest.checksum,
                 "identity_codes": "given" if data is not None else identity_codes, "train_meshes": len(train.rows),
                 "val_meshes": len(val.rows), "encoded_meshes": encoded_meshes,
                 "encoded_val_meshes": encoded_val_meshes if encoded_meshes else 0, "seed": seed},
        "encode_seconds": encode_seconds,
        "val_mean_code_rmse_mm": float(mesh_rmse(model, val, b0.expand(len(val.rows), -1)).mean()),
        "val_rest_rmse_mm": float(mesh_rmse(model, val, val.codes[:, sl]).mean()),  # anchors: no expression applied
        "to_code": {},
        "to_weights": {},
    }  # fmt: skip
    if enc_val is not None:
        metrics["val_encoded_floor_rmse_mm"] = float(mesh_rmse(model, enc_val, enc_val.codes[:, sl]).mean())
    candidates = {}
    for k in (KINDS if kind == "auto" else (kind,)):
        emap = ExpressionMap(ExpressionMapConfig(to_code=k, to_weights="linear", hidden=hidden, code_dim=d_exp))
        with torch.no_grad():
            emap.code_linear.weight.copy_(W0)
            emap.code_linear.bias.copy_(b0)
            if emap.code_mlp is not None:
                emap.code_mlp.output_layer.weight.zero_()
                emap.code_mlp.output_layer.bias.zero_()
        t0 = time.perf_counter()
        hist = _fit_to_code(model, emap, train, epochs=epochs, lr=lr or (0.01 if k == "linear" else 0.003),
                            batch_size=batch_size, num_vertices=num_vertices, code_reg=code_reg, seed=seed,
                            progress=progress)  # fmt: skip
        r: dict = {"seconds": time.perf_counter() - t0, "final_loss_mm2": hist[-1] if hist else None,
                   "init": "expression anchor" if anchor_init else "data"}
        with torch.no_grad():
            r["val_rmse_mm"] = float(mesh_rmse(model, val, map_codes(model, emap, val)).mean())
            if enc_val is not None:
                r["val_rmse_encoded_identity_mm"] = float(mesh_rmse(model, enc_val, emap.to_code(enc_val.weights)).mean())
        metrics["to_code"][k] = r
        log.info("to_code %s: val RMSE %.3f mm", k, r["val_rmse_mm"])
        candidates[k] = emap
    best_code = min(candidates, key=lambda k: metrics["to_code"][k]["val_rmse_mm"])
    if best_code == "mlp" and "linear" in candidates and (
            metrics["to_code"]["linear"]["val_rmse_mm"] <= (1 + prefer_linear_within) * metrics["to_code"]["mlp"]["val_rmse_mm"]):
        best_code = "linear"  # the simpler map unless the MLP is clearly better
    code_map = candidates[best_code]

    # to_weights: pairs (encoded code, weights) and (to_code(e), e) for every training weight vector
    with torch.no_grad():
        all_w = _all_weights(train_ds)
        x, y = [code_map.to_code(all_w)], [all_w]
        if enc_train is not None:
            x.append(enc_train.codes[:, sl])
            y.append(enc_train.weights)
        x, y = torch.cat(x), torch.cat(y)
        val_w = _all_weights(val_ds)
        val_codes = code_map.to_code(val_w)
        sparse_w = torch.from_numpy(sparse_weights(sparse_vectors, np.random.default_rng([seed, SPARSE_STREAM]))).float()
        sparse_codes = code_map.to_code(sparse_w)
    inverse = {}
    for k in (KINDS if inverse_kind == "auto" else (inverse_kind,)):
        emap = ExpressionMap(ExpressionMapConfig(to_code=best_code, to_weights=k, hidden=hidden, code_dim=d_exp))
        emap.load_state_dict(code_map.state_dict(), strict=False)
        t0 = time.perf_counter()
        _fit_to_weights(emap, x, y, steps=inverse_steps, lr=3e-3, ridge=ridge, seed=seed)
        r = {"seconds": time.perf_counter() - t0}
        with torch.no_grad():
            r["val_round_trip_mae"] = float((emap.to_weights(val_codes) - val_w).abs().mean())
            if sparse_vectors:
                r["val_sparse_round_trip_mae"] = float((emap.to_weights(sparse_codes) - sparse_w).abs().mean())
            if enc_val is not None:
                r["val_read_encoded_mae"] = float((emap.to_weights(enc_val.codes[:, sl]) - enc_val.weights).abs().mean())
        metrics["to_weights"][k] = r
        log.info("to_weights %s: %s", k, r)
        inverse[k] = emap
    def score(k):
        return sum(v for m, v in metrics["to_weights"][k].items() if m.endswith("_mae"))

    best_w = min(inverse, key=score)
    if best_w == "mlp" and "linear" in inverse and score("linear") <= (1 + prefer_linear_within) * score("mlp"):
        best_w = "linear"
    final = inverse[best_w]
    if fallback:
        final = final.with_fallback(fallback)
    metrics["chosen"] = {"to_code": best_code, "to_weights": best_w, "fallback": sorted(fallback or {})}
    metrics["seconds"] = time.perf_counter() - t_start
    final.config = final.config.model_copy(update={"metrics": metrics})
    for p in final.parameters():
        p.requires_grad_(False)
    return model.set_expression_map(final)


# ---- command line -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m facemodel.training.blendshape_map",
                                description="Learn a model's blendshape map (ICT/ARKit weights <-> expression codes) "
                                            "from a dataset with per-mesh blendshape weights, and save the model "
                                            "with it.")  # fmt: skip
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or Hub repo id")
    p.add_argument("--data", required=True, help="dataset folder with blendshape weights (ICT 4D)")
    p.add_argument("--out", required=True, help="output model folder (config.json + model.safetensors)")
    p.add_argument("--kind", choices=KINDS + ("auto",), default="auto", help="weights->code map (default: both, keep the better)")
    p.add_argument("--inverse-kind", choices=KINDS + ("auto",), default="auto", help="code->weights map")
    p.add_argument("--identity-codes", choices=("anchor", "encoded"), default="anchor",
                   help="identity codes of the training meshes: their identity's most neutral mesh, encoded (default), "
                        "or each mesh's own encoding")  # fmt: skip
    p.add_argument("--train-meshes", type=int, default=4000, help="meshes in the weights->code loss (anchor)")
    p.add_argument("--val-meshes", type=int, default=600)
    p.add_argument("--encoded-meshes", type=int, default=500, help="training meshes encoded one by one (code->weights)")
    p.add_argument("--encoded-val-meshes", type=int, default=150)
    p.add_argument("--epochs", type=int, default=25, help="end-to-end epochs of weights->code (0: keep the start)")
    p.add_argument("--anchor-init", action="store_true",
                   help="start weights->code from the expression-anchoring map the model was trained with "
                        "(lambda_expression_anchor; refitted on --data); with --epochs 0 --kind linear it is that map")
    p.add_argument("--fallback", choices=("auto", "none"), default="auto",
                   help="auto: shapes the training split never exercises (weights < --fallback-below) are applied as "
                        "ICT-FaceKit's generic linear deltas instead of through the code (needs --ict)")
    p.add_argument("--fallback-below", type=float, default=0.1)
    p.add_argument("--ict", default=None, help="ICT-FaceKit folder (default: $FACEMODEL_ICT_DIR or the download cache)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--sparse-vectors", type=int, default=2000,
                   help="random sparse tracker-like weight vectors in the code->weights validation (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iters", type=int, default=None, help="Gauss-Newton iterations of model.encode (default its own)")
    p.add_argument("--cache", default=None, help="keep the encodings in this .pt file and reuse them (same model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true")
    return p


def _fingerprint(model, data) -> str:
    return f"{model.generator.fingerprint()}|{data}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m facemodel.training.blendshape_map``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .._fs import atomic_dir, atomic_file
    from ..model import FaceModel

    try:
        model = FaceModel.from_pretrained(args.model)
        out = Path(args.out).expanduser()
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise FaceModelError(f"{str(out)!r} exists and is not empty; pass --overwrite to replace it")
        fingerprint = _fingerprint(model, FaceDataset(args.data, None).manifest.checksum)
        cache = {}
        if args.cache and Path(args.cache).is_file():
            blob = torch.load(args.cache, weights_only=False)
            if blob.get("fingerprint") == fingerprint:
                cache = blob["encodings"]
            else:
                log.warning("not using the encoding cache %s: made for another model or dataset", args.cache)
        before = set(cache)
        kw = {} if args.max_iters is None else {"max_iters": args.max_iters}
        fallback = None
        if args.fallback == "auto":
            names = unexercised_shapes(FaceDataset(args.data, split="train"), args.fallback_below)
            if names:
                from ..data.ict import ICTSource

                try:
                    source = ICTSource(args.ict)
                except DataSourceError as exc:
                    raise DataSourceError(f"{exc} (fallback shapes need ICT-FaceKit: pass --ict DIR, or --fallback none)") from exc
                fallback = ict_fallback_deltas(source, names, model.num_vertices)
                log.info("fallback shapes (never above %.2f in training): %s", args.fallback_below, ", ".join(names))
        learn_blendshape_map(model, args.data, kind=args.kind, inverse_kind=args.inverse_kind,
                             identity_codes=args.identity_codes, train_meshes=args.train_meshes,
                             val_meshes=args.val_meshes, encoded_meshes=args.encoded_meshes,
                             encoded_val_meshes=args.encoded_val_meshes, epochs=args.epochs, hidden=args.hidden,
                             sparse_vectors=args.sparse_vectors,
                             anchor_init=args.anchor_init, seed=args.seed, cache=cache, fallback=fallback,
                             progress=not args.quiet, **kw)  # fmt: skip
        if args.cache and set(cache) != before:
            with atomic_file(args.cache, "wb") as f:
                torch.save({"fingerprint": fingerprint, "encodings": cache}, f)
        with atomic_dir(out, overwrite=args.overwrite) as tmp:
            model.save_pretrained(tmp)
    except FaceModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = model.config.expression_map.metrics
    d = m["data"]
    print(f"wrote {out}")
    print(f"identity codes: {d['identity_codes']}; {d['train_meshes']} training meshes, validation on {d['val_meshes']} "
          f"(+ {d['encoded_val_meshes']} encoded); validation RMSE with the codes as they are (no expression "
          f"applied) {m['val_rest_rmse_mm']:.3f} mm, with the mean code {m['val_mean_code_rmse_mm']:.3f} mm"
          + (f", encoding floor {m['val_encoded_floor_rmse_mm']:.3f} mm" if "val_encoded_floor_rmse_mm" in m else ""))  # fmt: skip
    for k, r in m["to_code"].items():
        extra = (f" (absolute codes on each mesh's own encoding: {r['val_rmse_encoded_identity_mm']:.3f} mm)"
                 if "val_rmse_encoded_identity_mm" in r else "")  # fmt: skip
        print(f"  weights->code {k:<6}: val mesh RMSE {r['val_rmse_mm']:.3f} mm{extra}, {r['seconds']:.0f} s")
    for k, r in m["to_weights"].items():
        extra = f", tracker-like round trip {r['val_sparse_round_trip_mae']:.4f}" if "val_sparse_round_trip_mae" in r else ""
        extra += f", read-from-encoded MAE {r['val_read_encoded_mae']:.4f}" if "val_read_encoded_mae" in r else ""
        print(f"  code->weights {k:<6}: round-trip MAE {r['val_round_trip_mae']:.4f}{extra}")
    print(f"chosen: {m['chosen']}")
    if model.fallback_blendshapes:
        print(f"fallback shapes (linear ICT deltas, not learned): {', '.join(model.fallback_blendshapes)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
