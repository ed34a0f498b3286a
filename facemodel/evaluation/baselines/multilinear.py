"""Multilinear (Tucker) identity x expression model (Vlasic et al. 2005; paper ref. [43]).

Model (mm)::

    mesh = mean + U^T ( G x_1 [1, z_id] x_2 [1, z_exp] )

with ``U`` (r, 3V) an orthonormal vertex-mode basis, ``G`` (r, Di + 1, De + 1) the core and
normalised codes ``z_id`` (Di,), ``z_exp`` (De,). The leading 1s carry the mean and the
purely additive terms, so the linear additive model is the special case ``G[:, a, b] = 0``
for ``a, b >= 1``; the remaining core entries are the identity x expression interactions.

The data tensor
    Vlasic et al. decompose a complete identity x expression x vertex tensor (every subject
    performs every expression). ICT 4D (like most 4D data) is no such grid: every mesh has its
    own expression, shared by no other identity. What *is* shared is the expression's
    parameterisation: each mesh carries its 53 ICT blendshape weights ``w``. We therefore
    decompose the *latent complete* tensor ``T[identity, slot, vertex]`` whose expression
    slots are "neutral" and the 53 blendshapes: a mesh of identity ``i`` with weights ``w``
    is the known linear combination ``T[i] @ [1, w]``. The Tucker factors are fitted to the
    observed meshes only, by alternating least squares (Vlasic et al. fill the missing
    entries of an incomplete tensor iteratively; fitting the factors to the observed data
    is the same least-squares problem):

    - vertex mode: ``U`` = top ``vertex_rank`` principal components of the training meshes
      (streamed randomized SVD), the same truncation HOSVD makes; all other steps work on
      the meshes' r coordinates;
    - identity mode: one code per training identity;
    - expression mode: a linear map ``E`` from blendshape weights to the De-dim expression
      code (``z_exp`` is a linear function of ``w``: meshes of equal weights share a code,
      across identities, exactly as in a complete tensor);
    - core ``G``.

    Each step is an exact least-squares solve on per-identity sufficient statistics
    (``sum [1,w][1,w]^T`` and ``sum [1,w] y^T``), so a sweep costs well under a second
    whatever the number of meshes, and the loss never increases. Initialisation is the
    linear additive model (identity PCA of the neutral faces; expression PCA of the
    displacements, regressed on ``w``), which ALS can only improve on.
    Finally the codes are affinely normalised (mean 0, identity covariance over training
    identities / meshes) and rotated so that components are ordered by their effect on the
    meshes (HOSVD-like ordering); the inverse transforms are folded into ``G``.

The fit needs per-mesh blendshape weights (ICT 4D has them); a dataset without raises
:class:`~facemodel.evaluation.protocol.EvaluationError`.

Fast landmark fitting (Eq. 13) and :meth:`MultilinearModel.project` solve the bilinear
least-squares problem in both codes jointly by Levenberg-Marquardt (exact Jacobian,
monotone objective) from z = 0 and, for landmarks, a few fixed prior draws (the problem can
have local minima; the best fit is kept). Alternating exact solves for one code at a time
were tried first: they stall in long valleys and need hundreds of sweeps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..protocol import Codes, EvaluationError
from ._common import BaselineModel, Timer, as_train_dataset, clip_dim, find_neutrals, pca, subset_rows

__all__ = ["MultilinearModel"]

log = logging.getLogger(__name__)


def _solve_psd(A: np.ndarray, B: np.ndarray, rel: float = 1e-9) -> np.ndarray:
    """``(A + eps I)^-1 B`` for a symmetric PSD ``A`` (float64), eps relative to its diagonal."""
    eps = rel * max(float(np.trace(A)) / max(len(A), 1), 1e-30)
    return np.linalg.solve(A + eps * np.eye(len(A)), B)


def _whiten(cov: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(W, W_inv)`` with ``W cov W^T = I`` (symmetric inverse square root)."""
    evals, evecs = np.linalg.eigh(cov)
    if evals.min() <= evals.max() * 1e-12:
        raise EvaluationError(f"the fitted {what} codes are degenerate (a component has no variance); "
                              f"lower {what}_dim")  # fmt: skip
    W = evecs @ np.diag(evals**-0.5) @ evecs.T
    W_inv = evecs @ np.diag(evals**0.5) @ evecs.T
    return W, W_inv


class _ALSState:
    """Tucker factors during fitting (reduced coordinates, float64).

    Per identity i: ``Phi[i] = sum [1,w][1,w]^T`` (P+1, P+1), ``Psi[i] = sum [1,w] y^T``
    (P+1, r), ``gamma[i] = sum ||y||^2``.
    """

    def __init__(self, Phi: np.ndarray, Psi: np.ndarray, gamma: np.ndarray, A: np.ndarray, X: np.ndarray) -> None:
        self.Phi, self.Psi, self.gamma = Phi, Psi, gamma
        self.A = A  # (I, Di) identity codes
        self.X = X  # (De, P) expression codes = X @ w
        self.r = Psi.shape[2]
        self.G = np.zeros((self.r, A.shape[1] + 1, X.shape[0] + 1))

    @property
    def A_aug(self) -> np.ndarray:
        return np.concatenate([np.ones((len(self.A), 1)), self.A], 1)

    @property
    def T(self) -> np.ndarray:
        De, P = self.X.shape
        T = np.zeros((De + 1, P + 1))
        T[0, 0] = 1.0
        T[1:, 1:] = self.X
        return T

    def step_core(self) -> None:
        T, Aa = self.T, self.A_aug
        C = np.einsum("bp,ipq,dq->ibd", T, self.Phi, T, optimize=True)  # sum e~ e~^T per identity
        PsiT = np.einsum("bp,ipr->irb", T, self.Psi, optimize=True)  # sum y e~^T per identity
        Da1, De1 = Aa.shape[1], T.shape[0]
        KK = np.einsum("ia,ic,ibd->abcd", Aa, Aa, C, optimize=True).reshape(Da1 * De1, Da1 * De1)
        KY = np.einsum("ia,irb->rab", Aa, PsiT, optimize=True).reshape(self.r, Da1 * De1)
        self.G = _solve_psd(KK, KY.T).T.reshape(self.r, Da1, De1)

    def step_identity(self) -> None:
        T, G = self.T, self.G
        r, Da1, De1 = G.shape
        C = np.einsum("bp,ipq,dq->ibd", T, self.Phi, T, optimize=True)
        PsiT = np.einsum("bp,ipr->irb", T, self.Psi, optimize=True)
        S = np.einsum("rab,rcd->abcd", G, G, optimize=True)
        N = np.einsum("abcd,ibd->iac", S, C, optimize=True)  # (I, Da1, Da1)
        rhs = np.einsum("rab,irb->ia", G, PsiT, optimize=True)  # (I, Da1)
        for i in range(len(N)):
            self.A[i] = _solve_psd(N[i, 1:, 1:], rhs[i, 1:] - N[i, 1:, 0])

    def step_expression(self) -> None:
        Aa, G = self.A_aug, self.G
        H = np.einsum("rab,ia->irb", G, Aa, optimize=True)  # (I, r, De1)
        h0, Hb = H[:, :, 0], H[:, :, 1:]
        HtH = np.einsum("irf,irg->ifg", Hb, Hb, optimize=True)  # (I, De, De)
        Phiw = self.Phi[:, 1:, 1:]  # (I, P, P)
        sumw = self.Phi[:, 0, 1:]  # (I, P)
        R = np.transpose(self.Psi[:, 1:, :], (0, 2, 1)) - np.einsum("ir,ip->irp", h0, sumw, optimize=True)  # (I, r, P)
        De, P = self.X.shape
        lhs = np.einsum("ief,ipq->epfq", HtH, Phiw, optimize=True).reshape(De * P, De * P)
        rhs = np.einsum("irf,irp->fp", Hb, R, optimize=True).reshape(De * P)
        self.X = _solve_psd(lhs, rhs).reshape(De, P)

    def loss(self) -> float:
        """Sum of squared residuals over all meshes (reduced coordinates, mm^2)."""
        M = np.einsum("rab,ia,bp->irp", self.G, self.A_aug, self.T, optimize=True)  # (I, r, P+1)
        fit = np.einsum("irp,ipq,irq->", M, self.Phi, M, optimize=True)
        cross = np.einsum("irp,ipr->", M, self.Psi, optimize=True)
        return float(self.gamma.sum() - 2 * cross + fit)


class MultilinearModel(BaselineModel):
    """Tucker identity x expression model (see the module docstring).

    Args:
        mean: (V, 3) mean training mesh, mm.
        basis: (r, V, 3) orthonormal vertex-mode basis (as a (r, 3V) matrix, orthonormal rows).
        core: (r, Di + 1, De + 1) core tensor, mm, in normalised code coordinates.
        expression_map: (De, P + 1) map from ``[1, blendshape weights]`` to expression codes.
        faces: (F, 3) int64 triangles.
        info: fit information (saved with the model).

    Example:
        >>> m = MultilinearModel.fit("~/.cache/facemodel/ict4d")
        >>> codes = m.fit_landmarks_fast(points, landmark_idx, reg=0.01)
        >>> z_exp = m.expression_codes(blendshape_weights)   # ICT weights -> codes
    """

    kind = "multilinear"
    name = "Multilinear"

    def __init__(
        self,
        mean: torch.Tensor,
        basis: torch.Tensor,
        core: torch.Tensor,
        expression_map: torch.Tensor,
        faces: np.ndarray,
        info: dict[str, Any] | None = None,
    ) -> None:
        V = int(mean.shape[0])
        super().__init__(faces, V, info)
        r = int(basis.shape[0])
        if basis.shape[1:] != (V, 3) or core.dim() != 3 or core.shape[0] != r:
            raise EvaluationError(f"inconsistent multilinear tensors: basis {tuple(basis.shape)}, core {tuple(core.shape)}")
        if expression_map.shape[0] != core.shape[2] - 1:
            raise EvaluationError("expression_map rows must equal the core's expression size - 1")
        self.mean = mean.float().contiguous()
        self.basis = basis.float().contiguous()
        self.core = core.float().contiguous()
        self.expression_map = expression_map.float().contiguous()
        self.identity_dim = int(core.shape[1] - 1)
        self.expression_dim = int(core.shape[2] - 1)
        self.vertex_rank = r

    # ---- fitting ----
    @classmethod
    def fit(
        cls,
        data: Any,
        *,
        identity_dim: int = 65,
        expression_dim: int = 20,
        vertex_rank: int = 300,
        max_meshes: int | None = None,
        iterations: int = 100,
        tol: float = 1e-6,
        seed: int = 0,
        chunk: int = 1024,
    ) -> "MultilinearModel":
        """Fit on a dataset's training split by ALS (see the module docstring).

        Args:
            data: dataset folder (``train`` split) or a ``FaceDataset`` (with blendshape weights).
            identity_dim: identity code size; clipped (warning) to training identities - 1.
            expression_dim: expression code size; clipped to the rank of the weights.
            vertex_rank: size of the vertex-mode basis (principal components of the meshes);
                clipped to the data's rank.
            max_meshes: use a random subset of at most this many meshes (every neutral kept).
            iterations: maximum ALS sweeps; stops earlier when the loss improves by less
                than ``tol`` (relative).

        Raises:
            EvaluationError: no blendshape weights, missing data, too few identities.
        """
        timer = Timer()
        ds = as_train_dataset(data)
        try:
            weights_all = np.asarray(ds.meta("blendshapes"), np.float64)
        except KeyError:
            raise EvaluationError(f"{str(ds.root)!r} has no per-mesh blendshape weights; the multilinear baseline "
                                  "needs them to put expressions in correspondence across identities") from None  # fmt: skip
        nf = find_neutrals(ds)
        I = len(nf.identities)
        if I < 2:
            raise EvaluationError(f"the multilinear model needs at least 2 training identities, the data has {I}")
        rows = subset_rows(len(ds), max_meshes, seed, nf.rows)
        N, V = len(rows), ds.manifest.num_vertices
        who = nf.index[rows]
        W = weights_all[rows]
        P = W.shape[1]

        def chunks():
            for s in range(0, N, chunk):
                pos = np.arange(s, min(s + chunk, N))
                yield pos, ds.vertices(rows[pos]).reshape(len(pos), -1)

        vpca = pca(chunks, N, 3 * V, max(int(vertex_rank), 1), seed=seed, scores=True, power_iterations=2)
        r = clip_dim(vertex_rank, vpca.rank, "vertex_rank")
        Y = vpca.scores[:, :r]  # (N, r) reduced coordinates
        Da = clip_dim(identity_dim, min(I - 1, r), "identity_dim")
        w_rank = int(np.linalg.matrix_rank(W - W.mean(0))) if N > 1 else 0
        De = clip_dim(expression_dim, min(w_rank, r, P), "expression_dim")

        # sufficient statistics per identity
        Wt = np.concatenate([np.ones((N, 1)), W], 1)
        Phi = np.zeros((I, P + 1, P + 1))
        Psi = np.zeros((I, P + 1, r))
        gamma = np.zeros(I)
        for i in range(I):
            sel = who == i
            Phi[i] = Wt[sel].T @ Wt[sel]
            Psi[i] = Wt[sel].T @ Y[sel]
            gamma[i] = float((Y[sel] ** 2).sum())

        # initialisation: the linear additive model in reduced coordinates
        pos_neutral = np.searchsorted(rows, nf.rows)
        Yn = Y[pos_neutral]  # (I, r)
        A0 = Yn - Yn.mean(0)
        u = np.linalg.svd(A0, full_matrices=False)[0]
        A = u[:, :Da] * np.sqrt(I - 1)  # unit-variance identity codes
        D = Y - Yn[who]  # displacements
        D -= D.mean(0)
        _, sd, vtd = np.linalg.svd(D, full_matrices=False)
        c = D @ vtd[:De].T / (sd[:De] / np.sqrt(N - 1))  # unit-variance expression PCA codes
        X = np.linalg.lstsq(Wt, c, rcond=None)[0][1:].T  # (De, P): codes ~ X w (+ const)
        st = _ALSState(Phi, Psi, gamma, A, X)
        st.step_core()
        history = [st.loss()]
        for it in range(int(iterations)):
            st.step_identity()
            st.step_expression()
            st.step_core()
            history.append(st.loss())
            if history[-2] - history[-1] <= tol * abs(history[-2]):
                break
        log.info("multilinear ALS: %d sweeps, loss %.4g -> %.4g", len(history) - 1, history[0], history[-1])

        # normalise: identity codes over identities, expression codes over meshes
        G = st.G
        mu_a, cov_a = st.A.mean(0), np.cov(st.A, rowvar=False).reshape(Da, Da)
        Wa, Wa_inv = _whiten(cov_a, "identity")
        E = W @ st.X.T  # (N, De) expression codes of the meshes
        mu_e, cov_e = E.mean(0), np.cov(E, rowvar=False).reshape(De, De)
        We, We_inv = _whiten(cov_e, "expression")
        Ta = np.zeros((Da + 1, Da + 1))
        Ta[0, 0], Ta[1:, 0], Ta[1:, 1:] = 1.0, mu_a, Wa_inv  # a~ = Ta [1, z]
        Te = np.zeros((De + 1, De + 1))
        Te[0, 0], Te[1:, 0], Te[1:, 1:] = 1.0, mu_e, We_inv
        G = np.einsum("rab,ac,bd->rcd", G, Ta, Te, optimize=True)
        # order the components by their mean squared effect on the meshes under the prior
        # N(0, I) (rotations keep the codes white): E||d mesh / d z_k||^2 = S[k, k] with
        # S = sum over the other mode of the core slices' Gram matrices (HOSVD of the core)
        Sa = np.einsum("rab,rcb->ac", G[:, 1:], G[:, 1:], optimize=True)
        Se = np.einsum("rab,rad->bd", G[:, :, 1:], G[:, :, 1:], optimize=True)
        Ra = np.linalg.eigh(Sa)[1][:, ::-1]
        Re = np.linalg.eigh(Se)[1][:, ::-1]
        G[:, 1:] = np.einsum("rab,ac->rcb", G[:, 1:], Ra, optimize=True)
        G[:, :, 1:] = np.einsum("rab,bd->rad", G[:, :, 1:], Re, optimize=True)
        # codes: z_id = Ra^T Wa (a - mu_a); z_exp = Re^T We (X w - mu_e)
        Mexp = Re.T @ We  # (De, De)
        expression_map = np.concatenate([-(Mexp @ mu_e)[:, None], Mexp @ st.X], 1)  # (De, P+1)

        residual = max(_residual_energy(chunks, vpca, r), 0.0)  # outside the vertex basis, mm^2

        def rms(loss: float) -> float:  # RMS vertex error (mm) over the training meshes
            return float(np.sqrt((max(loss, 0.0) + residual) / (N * V)))

        info = {
            "train_identities": I,
            "train_meshes": N,
            "exact_neutrals": nf.num_exact,
            "vertex_rank": r,
            "vertex_basis_residual_rms_mm": rms(0.0),
            "als_sweeps": len(history) - 1,
            "als_loss_history": [float(x) for x in history],
            # tied codes (identity code per identity, expression code = map of the weights)
            "train_rms_mm_initial": rms(history[0]),
            "train_rms_mm": rms(history[-1]),
            "seed": seed,
            "fit_seconds": timer(),
        }
        basis = torch.from_numpy(vpca.components[:r].reshape(r, V, 3).astype(np.float32))
        mean = torch.from_numpy(vpca.mean.reshape(V, 3).astype(np.float32))
        return cls(mean, basis, torch.from_numpy(G.astype(np.float32)),
                   torch.from_numpy(expression_map.astype(np.float32)), ds.template.faces, info)  # fmt: skip

    # ---- decoding ----
    def _aug(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones(len(z), 1, dtype=z.dtype, device=z.device), z], 1)

    def _reduced(self, codes: Codes) -> torch.Tensor:
        """(n, r) vertex-mode coordinates ``G x1 [1, z_id] x2 [1, z_exp]``."""
        r, Da1, De1 = self.core.shape
        a, e = self._aug(codes.identity.float()), self._aug(codes.expression.float())
        t = (e @ self.core.reshape(r * Da1, De1).T).view(len(a), r, Da1)
        return (t * a[:, None, :]).sum(-1)

    def decode(self, codes: Codes, *, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """(n, V, 3) or (n, K, 3) meshes (mm) of ``codes``; differentiable w.r.t. the codes."""
        n = self.check_codes(codes)
        idx = self.check_vertex_index(vertices)
        mean, U = (self.mean, self.basis) if idx is None else (self.mean[idx], self.basis[:, idx])
        h = self._reduced(codes)
        return (mean.reshape(-1) + h @ U.reshape(self.vertex_rank, -1)).view(n, -1, 3)

    def expression_codes(self, blendshapes: Any) -> torch.Tensor:
        """(n, De) expression codes of (n, P) ICT blendshape weights (the fitted linear map)."""
        w = torch.as_tensor(np.asarray(blendshapes), dtype=torch.float32)
        P = self.expression_map.shape[1] - 1
        if w.dim() != 2 or w.shape[1] != P:
            raise EvaluationError(f"blendshape weights must have shape (n, {P}), got {tuple(w.shape)}")
        return self._aug(w) @ self.expression_map.T

    # ---- fitting codes ----
    def _solve_codes(self, M: torch.Tensor, target: torch.Tensor, reg: float, iterations: int, starts: int,
                     chunk: int = 256) -> Codes:  # fmt: skip
        """Minimise ``||M x2 [1,z_id] x3 [1,z_exp] - target||^2 + reg ||z||^2`` per row of target.

        Levenberg-Marquardt on the joint code ``z = [z_id, z_exp]`` (the bilinear Jacobian is
        exact and cheap; a step is kept only if it lowers the objective, so the objective
        never increases) from ``z = 0`` and ``starts - 1`` fixed prior draws; the best
        result per row is returned (the bilinear objective can have local minima).
        M: (R, Di+1, De+1), target: (B, R).
        """
        if reg < 0:
            raise EvaluationError(f"reg must be >= 0, got {reg}")
        if iterations < 1 or starts < 1:
            raise EvaluationError(f"iterations and starts must be >= 1, got {iterations}, {starts}")
        D = self.identity_dim + self.expression_dim
        draws = torch.randn(starts - 1, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        inits = torch.cat([torch.zeros(1, D, dtype=torch.float64), draws])
        M64 = M.double()
        out = []
        for t in target.double().split(chunk):
            best_z, best_f = None, None
            for z0 in inits:
                z, f = self._lm(M64, t, float(reg), int(iterations), z0.expand(len(t), D).clone())
                if best_z is None:
                    best_z, best_f = z, f
                else:
                    better = f < best_f
                    best_z = torch.where(better[:, None], z, best_z)
                    best_f = torch.where(better, f, best_f)
            out.append(best_z)
        z = torch.cat(out) if out else torch.zeros(0, D, dtype=torch.float64)
        Di = self.identity_dim
        return Codes(z[:, :Di].float(), z[:, Di:].float(), torch.zeros(len(z), 0))

    def _lm(self, M: torch.Tensor, t: torch.Tensor, reg: float, iterations: int,
            z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """LM from z (B, D); returns (z, objective)."""
        B, Di, De = len(t), self.identity_dim, self.expression_dim
        eye = torch.eye(Di + De, dtype=torch.float64)

        def parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            a, e = self._aug(z[:, :Di]), self._aug(z[:, Di:])
            Ta = torch.einsum("kab,nb->nka", M, e)  # (B, R, Di+1)
            F = torch.einsum("nka,na->nk", Ta, a)
            Te = torch.einsum("kab,na->nkb", M, a)  # (B, R, De+1)
            return F, Ta[..., 1:], Te[..., 1:]

        def objective(z: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
            return (F - t).square().sum(1) + reg * z.square().sum(1)

        F, Ji, Je = parts(z)
        f = objective(z, F)
        f_prev = f.clone()
        done = torch.zeros(B, dtype=torch.bool)
        mu = torch.full((B,), 1e-3, dtype=torch.float64)
        for _ in range(iterations):
            J = torch.cat([Ji, Je], 2)  # (B, R, Di+De)
            JtJ = J.transpose(1, 2) @ J
            g = torch.einsum("nkd,nk->nd", J, F - t) + reg * z
            scale = JtJ.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            lhs = JtJ + (reg + mu * scale)[:, None, None] * eye
            step = torch.linalg.solve(lhs, -g[..., None])[..., 0]
            z_new = z + step
            F_new, Ji_new, Je_new = parts(z_new)
            f_new = objective(z_new, F_new)
            ok = f_new <= f
            z = torch.where(ok[:, None], z_new, z)
            F = torch.where(ok[:, None], F_new, F)
            Ji = torch.where(ok[:, None, None], Ji_new, Ji)
            Je = torch.where(ok[:, None, None], Je_new, Je)
            f = torch.where(ok, f_new, f)
            mu = torch.where(ok, (mu / 3).clamp_min(1e-9), mu * 4)
            # converged: the step is negligible (codes are O(1)) or the objective is flat
            small = step.abs().max(1).values < 1e-6
            flat = ok & (f_prev - f <= 1e-10 * f_prev.abs() + 1e-12)
            done = done | small | flat
            f_prev = f.clone()
            if bool(done.all()):
                break
        return z, f

    def fit_landmarks_fast(self, points: torch.Tensor, vertices: torch.Tensor, reg: float, *, iterations: int = 50,
                           starts: int = 4) -> Codes:  # fmt: skip
        """Minimise ``sum_k ||v_k(z) - p_k||^2 + reg ||z||^2`` (Eq. 13) over both codes.

        The model is bilinear in (z_id, z_exp): Levenberg-Marquardt with the exact Jacobian
        (at most ``iterations`` steps, monotone in the objective) from z = 0 and
        ``starts - 1`` fixed prior draws, keeping the best fit.

        Args:
            points: (B, K, 3) targets, mm, model frame; vertices: (K,) vertex indices.
            reg: weight of ``||z||^2`` (>= 0).
        """
        points, idx = self.check_points(points, vertices)
        U = self.basis[:, idx].reshape(self.vertex_rank, -1)  # (r, 3K)
        M = torch.einsum("rk,rab->kab", U, self.core)
        target = points.reshape(len(points), -1) - self.mean[idx].reshape(-1)
        return self._solve_codes(M, target, float(reg), iterations, starts)

    def project(self, vertices: Any, *, reg: float = 0.0, iterations: int = 50, starts: int = 1) -> Codes:
        """Codes of full meshes (n, V, 3) mm: the same fit on all vertices (done in the
        vertex-mode coordinates, which is equivalent since the basis is orthonormal)."""
        v = self.check_meshes(vertices)
        y = (v - self.mean).reshape(len(v), -1) @ self.basis.reshape(self.vertex_rank, -1).T
        return self._solve_codes(self.core, y, float(reg), iterations, starts)

    # ---- files ----
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "basis": self.basis, "core": self.core, "expression_map": self.expression_map}

    @classmethod
    def _from_files(cls, config: dict[str, Any], t: dict[str, torch.Tensor]) -> "MultilinearModel":
        m = cls(t["mean"], t["basis"], t["core"], t["expression_map"], t["faces"].numpy(), config.get("info"))
        if (m.identity_dim, m.expression_dim) != (config["identity_dim"], config["expression_dim"]):
            raise EvaluationError("tensor shapes disagree with config.json sizes")
        return m


def _residual_energy(chunks, vpca, r: int) -> float:
    """Squared norm of the training meshes outside the first r components (mm^2)."""
    total = 0.0
    for _, rows in chunks():
        total += float(((np.asarray(rows, np.float64) - vpca.mean) ** 2).sum())
    return total - float((vpca.scores[:, :r] ** 2).sum())
