"""Loss terms of the paper: WGAN-GP (Eq. 2), weighted classification (Eq. 6-9),
feature loss (Eq. 10-11) and the Laplacian smoothness term (Eq. 12)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["gradient_penalty", "class_weights", "classification_loss", "feature_loss", "laplacian_loss"]


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` (Gulrajani et al. 2017).

    Args:
        critic: maps (B, ...) inputs to (B,) scores.
        real, fake: (B, ...) inputs of the same shape; ``x_hat`` is a random per-sample
            interpolation between them.
        generator: optional torch.Generator for the interpolation weights.

    Returns:
        scalar tensor (differentiable w.r.t. the critic's parameters).
    """
    B = real.shape[0]
    alpha = torch.rand((B,) + (1,) * (real.ndim - 1), device=real.device, dtype=real.dtype, generator=generator)
    x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score = critic(x)
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return (grad.reshape(B, -1).norm(dim=1) - 1).square().mean()


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-balancing weights ``w_c = N / (K * n_c)`` for unbalanced labels (King & Zeng 2001).

    Args:
        labels: (N,) int labels; negative = unlabelled (ignored).
        num_classes: K.

    Returns:
        (K,) float32 weights; a class absent from ``labels`` gets weight 0. A balanced label
        set gives all ones.
    """
    labels = labels[labels >= 0].long()
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    w = torch.zeros(num_classes)
    w[present] = labels.numel() / (int(present.sum()) * counts[present])
    return w


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy over the labelled samples only (label < 0 = unlabelled).

    Returns 0 (still differentiable) when no sample in the batch is labelled.
    """
    labelled = labels >= 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], labels[labelled].long(), weight=weights)


def feature_loss(f1: torch.Tensor, f2: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Mean ``1 - cos(f1_k, f2_k)`` over pairs (Eq. 10-11 with N/2 pairs in a batch of N).

    0 for identical features, 2 for opposite ones.

    Args:
        f1, f2: (P, F) features of P generated pairs that share a code.
        eps: guards the cosine against zero-norm features (dead Leaky-ReLU units).
    """
    return (1.0 - F.cosine_similarity(f1, f2, dim=1, eps=eps)).mean()


def laplacian_loss(laplacian: torch.Tensor, displacements: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """Smoothness of displacements, ``||L d||^2`` averaged over batch and vertices (Eq. 12).

    Args:
        laplacian: (V, V) sparse cotangent Laplacian of the template.
        displacements: (B, V, 3) generated displacements, mm.
        scale: displacements are divided by this first (training uses the generator's
            ``displacement_scale_mm``, 10 mm, so that lambda_4 = 100 weighs the term like
            the other losses: real ICT 4D displacements give about 0.004).

    Returns:
        scalar (mean over the B*V vertices of the squared norm of ``(L d / scale)_i``).
    """
    B, V, _ = displacements.shape
    x = (displacements / scale).permute(1, 0, 2).reshape(V, B * 3)  # (V, B*3)
    ld = torch.sparse.mm(laplacian, x)  # (V, B*3)
    return ld.square().sum() / (B * V)
