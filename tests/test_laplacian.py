import numpy as np
import scipy.sparse.linalg as spla
import torch

from facemodel.geometry.laplacian import cotangent_laplacian, cotangent_weights, scipy_to_torch_sparse


def _naive_cot_laplacian(v, f):
    n = len(v)
    L = np.zeros((n, n))
    for tri in f:
        for k in range(3):
            i, j, o = tri[(k + 1) % 3], tri[(k + 2) % 3], tri[k]
            a, b = v[i] - v[o], v[j] - v[o]
            cot = a @ b / np.linalg.norm(np.cross(a, b))
            L[i, j] += 0.5 * cot
            L[j, i] += 0.5 * cot
    L -= np.diag(L.sum(1))
    return L


def test_matches_naive_loop():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 3))
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5], [0, 5, 1]])
    np.testing.assert_allclose(cotangent_laplacian(v, f).toarray(), _naive_cot_laplacian(v, f), atol=1e-12)


def test_symmetric_nsd_annihilates_constants(template):
    L = cotangent_laplacian(template.vertices, template.faces)
    assert abs(L - L.T).max() < 1e-9
    np.testing.assert_allclose(L @ np.ones(L.shape[0]), 0, atol=1e-9)
    top = spla.eigsh(L, k=1, which="LA", return_eigenvectors=False)[0]  # largest eigenvalue
    assert top < 1e-6  # negative semi-definite
    bottom = spla.eigsh(L, k=1, which="SA", return_eigenvectors=False)[0]
    assert bottom < -1e-3  # and not zero


def test_plane_is_harmonic_for_linear_functions():
    # on a flat grid, cot-Laplacian of a linear function vanishes at interior vertices
    xs, ys = np.meshgrid(np.arange(5.0), np.arange(5.0))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(25)], 1)
    f = []
    for r in range(4):
        for c in range(4):
            a = r * 5 + c
            f += [[a, a + 1, a + 6], [a, a + 6, a + 5]]
    L = cotangent_laplacian(v, np.array(f))
    g = L @ (2 * v[:, 0] - 3 * v[:, 1] + 1)
    interior = [(r * 5 + c) for r in range(1, 4) for c in range(1, 4)]
    np.testing.assert_allclose(g[interior], 0, atol=1e-12)


def test_degenerate_triangle_is_finite():
    v = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0.0]])
    W = cotangent_weights(v, np.array([[0, 1, 2]]))
    assert np.isfinite(W.data).all()


def test_torch_sparse(template):
    L = template.laplacian()
    assert L.is_sparse and L.shape == (9409, 9409) and L.dtype == torch.float32
    d = torch.randn(9409, 3, requires_grad=True)
    loss = torch.sparse.mm(L, d).square().sum()
    loss.backward()
    assert torch.isfinite(d.grad).all()
    small = scipy_to_torch_sparse(cotangent_laplacian(np.eye(3), np.array([[0, 1, 2]])), dtype=torch.float64)
    assert small.shape == (3, 3) and small.dtype == torch.float64
    torch.testing.assert_close(small.to_dense().sum(1), torch.zeros(3, dtype=torch.float64))
