"""Shared plumbing of the baseline models: data access, neutral faces, PCA, checks, files.

Everything here works in millimetres on (V, 3) meshes flattened to ``3V`` rows
(``x, y, z`` of vertex 0, then vertex 1, ...), float32 unless stated otherwise.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..._fs import atomic_dir
from ...errors import FaceModelError
from ..protocol import Codes, EvaluationError, ShapeModel

__all__ = [
    "BaselineModel",
    "NeutralFaces",
    "as_train_dataset",
    "find_neutrals",
    "clip_dim",
    "pca",
    "stream_rows",
    "ridge_solve",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "facemodel-baseline"
FORMAT_VERSION = 1


# ---- data ----------------------------------------------------------------------------------
def as_train_dataset(data: Any, split: str | None = "train"):
    """A :class:`~facemodel.data.dataset.FaceDataset` of ``data`` (a dataset folder or a dataset).

    A folder is opened with ``split``; a ``FaceDataset`` is used as it is (its own split).

    Raises:
        EvaluationError: the folder is missing or not a dataset, or it holds no meshes.
    """
    from ...data.dataset import FaceDataset

    if isinstance(data, FaceDataset):
        ds = data
    else:
        if not isinstance(data, (str, os.PathLike)):
            raise EvaluationError(f"expected a dataset folder or a FaceDataset, got {type(data).__name__}")
        try:
            ds = FaceDataset(Path(data).expanduser(), split=split)
        except FaceModelError as exc:
            raise EvaluationError(
                f"cannot open the training data {str(data)!r}: {exc}. Pass a dataset folder built with "
                "`facemodel data build-ict` (or a FaceDataset)"
            ) from exc
    if len(ds) == 0:
        raise EvaluationError(f"the dataset {str(ds.root)!r} (split {ds.split!r}) holds no meshes; choose another split")
    return ds


@dataclass
class NeutralFaces:
    """The neutral face of each identity of a dataset selection.

    Attributes:
        identities: (I,) global identity index, ascending.
        rows: (I,) row (position in the dataset selection) of each identity's neutral mesh.
        activation: (I,) L1 norm of the blendshape weights of that mesh (0 = exact neutral;
            NaN when the dataset has no blendshape weights and an expression label was used).
        index: (M,) for every row of the selection, the position of its identity in
            ``identities``.
    """

    identities: np.ndarray
    rows: np.ndarray
    activation: np.ndarray
    index: np.ndarray

    @property
    def num_exact(self) -> int:
        """Identities whose neutral mesh has all blendshape weights exactly 0."""
        return int((self.activation == 0).sum())


def find_neutrals(ds) -> NeutralFaces:
    """Choose one neutral mesh per identity of ``ds``.

    With ICT blendshape weights (``meta("blendshapes")``) the mesh of least activation
    (smallest L1 norm of its weights) is taken: an exact neutral (all weights 0) where the
    identity has one, else its closest-to-rest frame. On ICT 4D 145 of the 240 training
    identities have an exact neutral (free sequences that happen to start at rest; the
    "neutral" labels of emotion and static meshes carry small random activations); the
    others' least-activated frame has an L1 weight of at most ~0.1 (e.g. a faint blink),
    i.e. sub-millimetre deviations from rest that the baselines absorb as a little identity
    variation. Without blendshape weights the first mesh labelled ``"neutral"`` is used.

    Raises:
        EvaluationError: an identity has neither blendshape weights nor a neutral-labelled mesh.
    """
    ids = np.asarray(ds.meta("identity"), np.int64)
    identities, index = np.unique(ids, return_inverse=True)
    rows = np.zeros(len(identities), np.int64)
    activation = np.full(len(identities), np.nan)
    try:
        blend = np.asarray(ds.meta("blendshapes"), np.float64)
    except KeyError:
        blend = None
    if blend is not None:
        act = np.abs(blend).sum(1)
        order = np.lexsort((np.arange(len(ids)), act, index))  # by identity, then activation, then row
        first = np.searchsorted(index[order], np.arange(len(identities)))
        rows = order[first]
        activation = act[rows]
    else:
        labels = list(ds.expression_labels)
        if "neutral" not in labels:
            raise EvaluationError("the dataset has neither blendshape weights nor a 'neutral' expression label; "
                                  "the baselines need one neutral mesh per identity: label one per identity")  # fmt: skip
        lab = np.asarray(ds.meta("expression"))
        for k in range(len(identities)):
            hit = np.flatnonzero((index == k) & (lab == labels.index("neutral")))
            if not len(hit):
                raise EvaluationError(f"identity {int(identities[k])} has no mesh labelled 'neutral' and the dataset "
                                      "has no blendshape weights; label one neutral mesh per identity")  # fmt: skip
            rows[k] = hit[0]
    return NeutralFaces(identities, rows, activation, index)


def subset_rows(n: int, max_meshes: int | None, seed: int, keep: np.ndarray) -> np.ndarray:
    """Sorted rows ``0..n-1``: all of them, or ``max_meshes`` drawn at random that include ``keep``."""
    if max_meshes is None or max_meshes >= n:
        return np.arange(n)
    if max_meshes < len(keep):
        raise EvaluationError(f"max_meshes={max_meshes} is fewer than the {len(keep)} neutral meshes the fit needs; "
                              "raise max_meshes")  # fmt: skip
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(n), keep)
    extra = rng.choice(rest, size=max_meshes - len(np.unique(keep)), replace=False)
    return np.sort(np.concatenate([np.unique(keep), extra]))


def stream_rows(ds, rows: np.ndarray, chunk: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions, vertices)``: ``vertices`` (c, V, 3) float32 mm of ``rows[positions]``."""
    for s in range(0, len(rows), chunk):
        pos = np.arange(s, min(s + chunk, len(rows)))
        yield pos, ds.vertices(rows[pos])


# ---- linear algebra ------------------------------------------------------------------------
def clip_dim(requested: int, supported: int, what: str) -> int:
    """``requested`` clipped to ``supported`` (with a warning); errors for < 1."""
    if int(requested) < 1:
        raise EvaluationError(f"{what} must be at least 1, got {requested}")
    if supported < 1:
        raise EvaluationError(f"the training data supports no {what} (rank 0); use more identities or meshes")
    if requested > supported:
        warnings.warn(f"{what}={requested} exceeds what the training data supports ({supported}); using {supported}",
                      UserWarning, stacklevel=3)  # fmt: skip
        return int(supported)
    return int(requested)


@dataclass
class PCAResult:
    """Principal components of rows ``x`` (N, D).

    Attributes:
        mean: (D,) float64.
        components: (k, D) float64 orthonormal rows, by decreasing variance.
        std: (k,) float64 standard deviation of the data along each component (ddof=1).
        rank: numerical rank of the centred data (components that can be asked for).
        scores: (N, k) float64 coordinates of the rows along the components (only when
            asked for).
    """

    mean: np.ndarray
    components: np.ndarray
    std: np.ndarray
    rank: int
    scores: np.ndarray | None = None


def _rank(s: np.ndarray, n: int, d: int) -> int:
    if not len(s) or s[0] <= 0:
        return 0
    # singular values below 1e-6 of the largest are round-off of the float32 arithmetic (float16
    # storage noise is ~1e-4 relative and counts as data: it is what the meshes are)
    tol = s[0] * 1e-6
    return int(min((s > tol).sum(), n - 1))


def pca(
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    n: int,
    d: int,
    k: int,
    *,
    exact_below: int = 2000,
    oversample: int = 24,
    power_iterations: int = 3,
    seed: int = 0,
    scores: bool = False,
) -> PCAResult:
    """Top ``k`` principal components of N rows of dimension D delivered in chunks.

    Small problems (``n <= exact_below``) are solved exactly through the N x N Gram matrix
    (float64); larger ones by a randomized SVD (Halko et al. 2011) that streams over the
    data ``2 + 2 * power_iterations`` times and never holds more than one chunk, so the
    whole training split of ICT 4D (23,704 x 28,227) fits in memory comfortably.

    Args:
        chunks: callable returning an iterator of ``(positions, rows)``: positions (c,) int
            into ``0..n-1`` and rows (c, D) float arrays; the same order every call.
        n, d: number and dimension of rows.
        k: components wanted (at most ``min(n - 1, d)`` are returned).
        scores: also return the rows' coordinates (one more pass for large data).
    """
    if n < 2:
        raise EvaluationError(f"PCA needs at least 2 samples, got {n}")
    if n <= exact_below:
        X = np.empty((n, d), np.float64)
        for pos, rows in chunks():
            X[pos] = rows
        mean = X.mean(0)
        X -= mean
        gram = X @ X.T
        evals, evecs = np.linalg.eigh(gram)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        s = np.sqrt(np.clip(evals, 0, None))
        rank = _rank(s, n, d)
        kk = min(k, rank)
        comps = (evecs[:, :kk].T @ X) / s[:kk, None]
        comps /= np.linalg.norm(comps, axis=1, keepdims=True)
        return PCAResult(mean, comps, s[:kk] / math.sqrt(n - 1), rank, X @ comps.T if scores else None)
    ell = min(k + oversample, n, d)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((d, ell)).astype(np.float32)
    # pass 1: mean and A @ omega
    total = np.zeros(d, np.float64)
    Y = np.empty((n, ell), np.float64)
    for pos, rows in chunks():
        rows = np.asarray(rows, np.float32)
        total += rows.sum(0, dtype=np.float64)
        Y[pos] = rows @ omega
    mean = total / n
    Y -= (mean.astype(np.float32) @ omega)[None]

    def a_t(Q: np.ndarray) -> np.ndarray:  # centred A^T Q, (d, ell)
        out = np.zeros((d, Q.shape[1]), np.float64)
        Q32 = Q.astype(np.float32)
        for pos, rows in chunks():
            out += np.asarray(rows, np.float32).T @ Q32[pos]
        return out - np.outer(mean, Q.sum(0))

    def a(P: np.ndarray) -> np.ndarray:  # centred A P, (n, ell)
        out = np.empty((n, P.shape[1]), np.float64)
        P32 = P.astype(np.float32)
        for pos, rows in chunks():
            out[pos] = np.asarray(rows, np.float32) @ P32
        return out - (mean @ P)[None]

    for _ in range(power_iterations):
        Q, _ = np.linalg.qr(Y)
        P, _ = np.linalg.qr(a_t(Q))
        Y = a(P)
    Q, _ = np.linalg.qr(Y)
    B = a_t(Q).T  # (ell, d) = Q^T A_c
    _, s, vt = np.linalg.svd(B, full_matrices=False)
    rank = _rank(s, n, d)
    if rank >= ell:  # the sketch is full: the data's rank is at least ell, assume the maximum
        rank = min(n - 1, d)
    kk = min(k, rank)
    comps = vt[:kk]
    return PCAResult(mean, comps, s[:kk] / math.sqrt(n - 1), rank, a(comps.T) if scores else None)


def ridge_solve(A: torch.Tensor, b: torch.Tensor, reg: float) -> torch.Tensor:
    """Batched ``argmin_z ||A z - b||^2 + reg ||z||^2``.

    Args:
        A: (B, R, D) or (R, D); b: (B, R).

    Returns:
        (B, D) solutions (float32 for float32 inputs; solved in float64).
    """
    A64, b64 = A.double(), b.double()
    if A64.dim() == 2:
        AtA = A64.T @ A64
        Atb = b64 @ A64  # (B, D)
        eye = torch.eye(AtA.shape[-1], dtype=torch.float64)
        lhs = AtA + reg * eye
        z = torch.linalg.lstsq(lhs, Atb.T).solution.T if reg == 0 else torch.linalg.solve(lhs, Atb.T).T
    else:
        AtA = A64.transpose(1, 2) @ A64
        Atb = torch.einsum("brd,br->bd", A64, b64)
        eye = torch.eye(AtA.shape[-1], dtype=torch.float64)
        lhs = AtA + reg * eye
        z = (torch.linalg.lstsq(lhs, Atb[..., None]).solution if reg == 0
             else torch.linalg.solve(lhs, Atb[..., None]))[..., 0]  # fmt: skip
    return z.to(A.dtype)


# ---- the common model class ----------------------------------------------------------------
class BaselineModel(ShapeModel):
    """What the three baselines share: input checks and ``save`` / ``load``.

    A saved baseline is a folder with ``config.json`` (format, ``kind``, sizes, fit
    information) and ``model.safetensors`` (tensors), written atomically.
    """

    kind: str = "baseline"
    noise_dim = 0

    def __init__(self, faces: np.ndarray, num_vertices: int, info: dict[str, Any] | None = None) -> None:
        self.faces = np.asarray(faces, np.int64)
        self.num_vertices = int(num_vertices)
        self.info: dict[str, Any] = dict(info or {})

    # -- checks --
    def check_codes(self, codes: Codes) -> int:
        """Validate ``codes`` against the model's sizes; returns n."""
        if not isinstance(codes, Codes):
            raise EvaluationError(f"decode expects a Codes object, got {type(codes).__name__}")
        n = len(codes)
        want = {"identity": self.identity_dim, "expression": self.expression_dim, "noise": self.noise_dim}
        for key, dim in want.items():
            t = getattr(codes, key)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != n or t.shape[1] != dim:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise EvaluationError(f"{self.name}: {key} codes must have shape (n, {dim}) with n = {n}, got {shape}")
        return n

    def check_vertex_index(self, vertices: torch.Tensor | None) -> torch.Tensor | None:
        if vertices is None:
            return None
        idx = torch.as_tensor(vertices, dtype=torch.int64)
        if idx.dim() != 1 or (len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.num_vertices)):
            raise EvaluationError(f"{self.name}: vertices must be a 1-D index into 0..{self.num_vertices - 1}")
        return idx

    def check_points(self, points: torch.Tensor, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.check_vertex_index(vertices)
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.dim() != 3 or points.shape[1:] != (len(idx), 3):
            raise EvaluationError(f"{self.name}: points must have shape (B, {len(idx)}, 3) for {len(idx)} vertices, "
                                  f"got {tuple(points.shape)}")  # fmt: skip
        if not torch.isfinite(points).all():
            raise EvaluationError(f"{self.name}: points contain NaN or infinite coordinates")
        return points, idx

    def check_meshes(self, vertices: Any, name: str = "vertices") -> torch.Tensor:
        v = torch.as_tensor(np.asarray(vertices) if not isinstance(vertices, torch.Tensor) else vertices,
                            dtype=torch.float32)  # fmt: skip
        if v.dim() != 3 or v.shape[1:] != (self.num_vertices, 3):
            raise EvaluationError(f"{self.name}: {name} must have shape (n, {self.num_vertices}, 3), got {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise EvaluationError(f"{self.name}: {name} contain NaN or infinite coordinates")
        return v

    # -- files --
    def _config(self) -> dict[str, Any]:
        """Extra sizes a subclass needs to rebuild itself (JSON-serialisable)."""
        return {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def _from_files(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "BaselineModel":
        raise NotImplementedError

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model into the folder ``path`` (atomically); returns the folder.

        Raises:
            OutputPathError: ``path`` exists and is not empty (pass ``overwrite=True``).
        """
        config = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "name": self.name,
            "identity_dim": self.identity_dim,
            "expression_dim": self.expression_dim,
            "num_vertices": self.num_vertices,
            "info": self.info,
            **self._config(),
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self._tensors().items()}
        tensors["faces"] = torch.as_tensor(self.faces, dtype=torch.int64)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT_NAME, "kind": self.kind})
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
            mask = os.umask(0)
            os.umask(mask)
            for name in (WEIGHTS_NAME, CONFIG_NAME):  # safetensors writes 0600: give the usual mode
                os.chmod(tmp / name, 0o666 & ~mask)
        return Path(path).expanduser()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BaselineModel":
        """Load a model written by :meth:`save` (of this class's kind; any kind when called
        on :class:`BaselineModel` itself).

        Raises:
            EvaluationError: missing folder or files, another format or kind, bad tensors.
        """
        config, tensors = read_files(path)
        kind = config.get("kind")
        if cls is BaselineModel:  # any kind
            kinds = {sub.kind: sub for sub in BaselineModel.__subclasses__()}
            if kind not in kinds:
                raise EvaluationError(f"{str(path)!r} holds an unknown baseline kind {kind!r}; known: {sorted(kinds)}")
            cls = kinds[kind]
        elif kind != cls.kind:
            raise EvaluationError(f"{str(path)!r} holds a {kind!r} baseline, not {cls.kind!r}; "
                                  "load it with facemodel.evaluation.baselines.load_baseline")  # fmt: skip
        try:
            return cls._from_files(config, tensors)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            if isinstance(exc, EvaluationError):
                raise
            raise EvaluationError(f"{str(path)!r} is not a valid {cls.kind} baseline ({exc!r}); re-fit and save it again") from exc


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a saved baseline folder, validated (the weights must exist too)."""
    folder = Path(path).expanduser()
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise EvaluationError(f"{str(folder)!r} is not a saved baseline (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                              "fit one and save it with .save(path)")  # fmt: skip
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{str(cfg_path)!r} is not valid JSON ({exc}); re-save the baseline") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise EvaluationError(f"{str(cfg_path)!r} is not a facemodel baseline config")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise EvaluationError(f"{str(folder)!r} uses baseline format {config['format_version']}; this facemodel reads "
                              f"up to {FORMAT_VERSION}: upgrade facemodel")  # fmt: skip
    return config


def read_files(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, tensors)`` of a saved baseline folder, validated."""
    config = read_config(path)
    w_path = Path(path).expanduser() / WEIGHTS_NAME
    try:
        tensors = load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own error types
        raise EvaluationError(f"{str(w_path)!r} is not a readable safetensors file ({exc}); re-save the baseline") from exc
    return config, tensors


class Timer:
    """Wall-clock seconds since creation (for fit information)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 2)
