"""The small interface every evaluated model exposes, so each metric runs on all of them.

A :class:`ShapeModel` maps per-factor codes to meshes in the template's topology (mm):

- ``identity`` codes ``(n, identity_dim)``, ``expression`` codes ``(n, expression_dim)`` and
  optional ``noise`` codes ``(n, noise_dim)``; all prior distributions are N(0, I) unless a
  model says otherwise (``sample_codes`` is the prior), so the regulariser ``lambda ||z||^2``
  of the paper's Eq. 13 means the same thing for every model.
- :meth:`ShapeModel.decode` is differentiable with respect to the codes (the paper's Adam
  fitting protocol runs on every model unchanged) and can decode only some vertex rows.

Adapters here: :class:`FaceModelAdapter` (our GAN) and :class:`ICTGroundTruth` (the dataset's
own generator, the "perfectly decoupled" reference used by the tests). The baselines live in
:mod:`facemodel.evaluation.baselines`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import EvaluationError

__all__ = ["Codes", "ShapeModel", "FaceModelAdapter", "ICTGroundTruth", "EvaluationError"]


@dataclass
class Codes:
    """Per-factor codes of ``n`` faces.

    Attributes:
        identity: (n, identity_dim) float32.
        expression: (n, expression_dim) float32.
        noise: (n, noise_dim) float32 (noise_dim may be 0).
    """

    identity: torch.Tensor
    expression: torch.Tensor
    noise: torch.Tensor

    def __len__(self) -> int:
        return int(self.identity.shape[0])

    def __getitem__(self, idx) -> "Codes":
        return Codes(self.identity[idx], self.expression[idx], self.noise[idx])

    @staticmethod
    def cat(items: list["Codes"]) -> "Codes":
        return Codes(*(torch.cat([getattr(c, k) for c in items]) for k in ("identity", "expression", "noise")))


class ShapeModel(abc.ABC):
    """A face model with separate identity and expression codes.

    Subclasses set ``name``, ``identity_dim``, ``expression_dim``, ``noise_dim``, ``faces``
    ((F, 3) int64) and ``num_vertices``, and implement :meth:`decode`.
    """

    name: str = "model"
    identity_dim: int
    expression_dim: int
    noise_dim: int = 0
    faces: np.ndarray
    num_vertices: int

    def sample_codes(self, n: int, *, generator: torch.Generator | None = None) -> Codes:
        """Codes drawn from the model's prior (default N(0, I) for every factor)."""
        return Codes(
            torch.randn(n, self.identity_dim, generator=generator),
            torch.randn(n, self.expression_dim, generator=generator),
            torch.randn(n, self.noise_dim, generator=generator),
        )

    @abc.abstractmethod
    def decode(self, codes: Codes, *, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """Meshes of codes, differentiable with respect to the codes.

        Args:
            codes: :class:`Codes` of n faces.
            vertices: optional (K,) int64 vertex indices to decode (default: all).

        Returns:
            (n, V, 3) or (n, K, 3) float32 vertices in mm.
        """

    def sample(self, n: int, *, generator: torch.Generator | None = None, chunk: int = 256) -> torch.Tensor:
        """(n, V, 3) meshes (mm) of prior codes, decoded in chunks without gradients."""
        codes = self.sample_codes(n, generator=generator)
        return self.decode_batched(codes, chunk=chunk)

    @torch.no_grad()
    def decode_batched(self, codes: Codes, *, chunk: int = 256) -> torch.Tensor:
        """(n, V, 3) meshes of many codes, decoded ``chunk`` at a time without gradients."""
        return torch.cat([self.decode(codes[s : s + chunk]) for s in range(0, len(codes), chunk)])

    def fit_landmarks_fast(self, points: torch.Tensor, vertices: torch.Tensor, reg: float) -> Codes | None:
        """The model's own fast landmark fit, model frame, no alignment.

        Args:
            points: (B, K, 3) target positions in mm (model frame).
            vertices: (K,) int64 vertex index of each point.
            reg: weight of ``||z||^2`` against the squared landmark error (mm^2), Eq. 13.

        Returns:
            the fitted :class:`Codes`, or ``None`` when the model has no fast solver
            (then only the shared Adam protocol is reported for it).
        """
        return None


class FaceModelAdapter(ShapeModel):
    """Our GAN (:class:`facemodel.FaceModel`) behind the :class:`ShapeModel` interface.

    Args:
        model: the :class:`facemodel.FaceModel`.
        name: the row's name in reports.
        expression_prior: what :meth:`sample_codes` draws expression codes from:
            ``"gaussian"`` (default, the paper's protocol: N(0, I), the GAN's training prior)
            or ``"blendshapes"`` (``FaceModel.sample``'s default: realistic blendshape weights
            through the blendshape map, :meth:`facemodel.FaceModel.random_blendshapes`).
    """

    def __init__(self, model, name: str = "ours", *, expression_prior: str = "gaussian") -> None:
        if expression_prior not in ("gaussian", "blendshapes"):
            raise EvaluationError(f"expression_prior must be 'gaussian' or 'blendshapes', got {expression_prior!r}")
        if expression_prior == "blendshapes" and getattr(model, "expression_map", None) is None:
            raise EvaluationError("expression_prior='blendshapes' needs a model with a blendshape map")
        self.model = model
        self.name = name
        self.expression_prior = expression_prior
        sl = model.code_slices
        for key in ("identity", "expression"):
            if key not in sl:
                raise EvaluationError(f"model has no {key!r} factor (factors: {sorted(sl)}); "
                                      "the evaluation needs an identity and an expression factor")  # fmt: skip
        self._slices = sl
        self.identity_dim = sl["identity"].stop - sl["identity"].start
        self.expression_dim = sl["expression"].stop - sl["expression"].start
        self.noise_dim = sl["noise"].stop - sl["noise"].start if "noise" in sl else 0
        self.faces = model.faces.cpu().numpy() if isinstance(model.faces, torch.Tensor) else np.asarray(model.faces)
        self.num_vertices = model.num_vertices
        self._extra = [k for k in sl if k not in ("identity", "expression", "noise")]

    def sample_codes(self, n: int, *, generator: torch.Generator | None = None) -> Codes:
        """Identity and noise N(0, I); the expression from :attr:`expression_prior`."""
        codes = super().sample_codes(n, generator=generator)
        if self.expression_prior == "blendshapes":
            w = self.model.random_blendshapes(n, generator=generator)
            with torch.no_grad():
                e = self.model.expression_from_blendshapes(w)
            codes.expression = e.detach().to(dtype=codes.expression.dtype, device="cpu")
        return codes

    def full_codes(self, codes: Codes) -> torch.Tensor:
        """(n, D) codes in the generator's layout (other factors, if any, at 0)."""
        n = len(codes)
        D = max(s.stop for s in self._slices.values())
        z = torch.zeros(n, D, dtype=codes.identity.dtype, device=codes.identity.device)
        z[:, self._slices["identity"]] = codes.identity
        z[:, self._slices["expression"]] = codes.expression
        if self.noise_dim:
            z[:, self._slices["noise"]] = codes.noise
        return z

    def split_codes(self, z: torch.Tensor) -> Codes:
        noise = z[:, self._slices["noise"]] if self.noise_dim else z[:, :0]
        return Codes(z[:, self._slices["identity"]], z[:, self._slices["expression"]], noise)

    def decode(self, codes: Codes, *, vertices: torch.Tensor | None = None) -> torch.Tensor:
        z = self.full_codes(codes)
        if vertices is None:
            return self.model(z)
        vertices = torch.as_tensor(vertices, device=z.device)
        return self.model.template[vertices] + self.model.generator.decode_vertices(z, vertices)

    def fit_landmarks_fast(self, points: torch.Tensor, vertices: torch.Tensor, reg: float) -> Codes | None:
        fit = self.model.fit_landmarks(points, landmarks=torch.as_tensor(vertices), reg=reg, align="none", decode=False)
        return self.split_codes(fit.codes.float())


class ICTGroundTruth(ShapeModel):
    """The ICT 4D dataset's own generator as a :class:`ShapeModel` (perfectly decoupled).

    Identity codes are ICT identity-PCA weights (100, N(0, I)); expression codes are the 53
    ICT blendshape weights, drawn by :meth:`sample_codes` from ``expression_pool`` (e.g. the
    training meshes' weights). Each distinct identity's deformation-transferred blendshapes
    are computed once (~0.3 s) and cached, so sample identities from a small pool
    (``identity_pool``) when decoding many faces.

    Args:
        generator: an :class:`facemodel.data.builder.ICTFaceGenerator`.
        identity_pool: (P, 100) identity weights :meth:`sample_codes` draws from.
        expression_pool: (Q, 53) blendshape weights :meth:`sample_codes` draws from.
        cache_size: identities whose blendshapes are kept (~6 MB each); default ``max(64, P)``,
            the whole pool: with fewer, random draws from the pool evict identities that come
            back, and each return costs a new transfer (a 100-identity test split made the
            decoupling scores of this model take hours instead of a minute).
    """

    name = "ICT ground truth"
    noise_dim = 0

    def __init__(self, generator, identity_pool: np.ndarray, expression_pool: np.ndarray, *,
                 cache_size: int | None = None) -> None:  # fmt: skip
        self.gen = generator
        self.identity_pool = torch.as_tensor(np.asarray(identity_pool, np.float32))
        self.expression_pool = torch.as_tensor(np.asarray(expression_pool, np.float32))
        self.identity_dim = int(self.identity_pool.shape[1])
        self.expression_dim = int(self.expression_pool.shape[1])
        self.faces = np.asarray(generator.template.faces)
        self.num_vertices = int(generator.template.num_vertices)
        self._cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache_size = max(64, len(self.identity_pool)) if cache_size is None else int(cache_size)

    def sample_codes(self, n: int, *, generator: torch.Generator | None = None) -> Codes:
        i = torch.randint(len(self.identity_pool), (n,), generator=generator)
        j = torch.randint(len(self.expression_pool), (n,), generator=generator)
        return Codes(self.identity_pool[i], self.expression_pool[j], torch.zeros(n, 0))

    def _basis(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = w.detach().cpu().numpy().astype(np.float32).tobytes()
        if key not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            n, d = self.gen.expression_basis(w.detach().cpu().numpy().astype(np.float64))
            self._cache[key] = (torch.as_tensor(n, dtype=torch.float32), torch.as_tensor(d, dtype=torch.float32))
        return self._cache[key]

    def decode(self, codes: Codes, *, vertices: torch.Tensor | None = None) -> torch.Tensor:
        ids, inverse = torch.unique(codes.identity.detach(), dim=0, return_inverse=True)
        K = self.num_vertices if vertices is None else len(vertices)
        out = codes.expression.new_zeros(len(codes), K, 3)
        for u in range(len(ids)):
            rows = (inverse == u).nonzero().squeeze(1)
            neutral, deltas = self._basis(ids[u])
            if vertices is not None:
                neutral, deltas = neutral[vertices], deltas[:, vertices]
            e = codes.expression[rows]
            out[rows] = neutral[None] + torch.einsum("me,evc->mvc", e, deltas)
        return out
