"""Latent codes during training: fixed label codes and the per-step alternation (§4.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..networks.config import GeneratorConfig

__all__ = ["LabelCodes", "CodeBatch", "sample_codes"]


class LabelCodes(nn.Module):
    """One fixed code per label and factor (``T^id``, ``T^exp``), drawn once from N(0, I).

    They are what lets users ask for "happiness" later, so they are saved in checkpoints
    and exported with the model.

    Args:
        config: the generator config (code sizes and label counts).
        seed: seed of the draw.
    """

    def __init__(self, config: GeneratorConfig, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for f in config.factors:
            self.register_buffer(f"codes_{f.name}", torch.randn(f.num_labels, f.code_dim, generator=g))

    def codes(self, factor: str) -> torch.Tensor:
        """(num_labels, code_dim) fixed codes of a factor."""
        return getattr(self, f"codes_{factor}")


@dataclass
class CodeBatch:
    """Codes of one generator batch.

    Attributes:
        z: (B, D) full codes.
        labels: {factor: (B,) long}: label of each row for the labelled factor, -1 elsewhere.
        labelled: the factor whose codes come from the label codes this step (or None).
        pairs: (P, 2) long row indices; each pair shares every *unlabelled* factor's code
            (noise differs), so the feature loss applies to those factors.
    """

    z: torch.Tensor
    labels: dict[str, torch.Tensor]
    labelled: str | None
    pairs: torch.Tensor


def sample_codes(
    step: int,
    batch_size: int,
    config: GeneratorConfig,
    label_codes: LabelCodes,
    *,
    classified: tuple[str, ...] | None = None,
    prior_pairs: float = 0.0,
    device: torch.device | str = "cpu",
) -> CodeBatch:
    """Draw the generator codes for ``step`` (paper §4.3 alternation).

    Steps cycle through the classified factors: at a step labelled by factor ``f``,
    ``z_f`` is the fixed code of a uniformly random label of ``f``; every other factor's
    code is drawn from N(0, I) once per *pair* of rows, and noise per row. With the paper's
    two factors this alternates between labelled identity codes with random expression
    codes and the reverse.

    Args:
        step: generator step (selects the labelled factor).
        batch_size: B (even).
        classified: factors with a classification loss (default: all); ``()`` = none.
        prior_pairs: fraction of the pairs (rounded down) whose labelled-factor codes are
            drawn from N(0, I) instead of the label codes (their label is -1, so only the
            feature loss and the critic score see them). 0 = the paper.
    """
    if batch_size % 2:
        raise ValueError(f"batch_size must be even (rows come in pairs), got {batch_size}")
    names = tuple(f.name for f in config.factors)
    classified = names if classified is None else classified
    labelled = classified[step % len(classified)] if classified else None
    P = batch_size // 2
    parts, labels = [], {}
    for f in config.factors:
        if f.name == labelled:
            lab = torch.randint(f.num_labels, (batch_size,), device=device)
            code = label_codes.codes(f.name).to(device)[lab]
            free = 2 * int(prior_pairs * P)  # the last rows (whole pairs) take prior codes
            if free:
                code[batch_size - free:] = torch.randn(free, f.code_dim, device=device)
                lab[batch_size - free:] = -1
            parts.append(code)
            labels[f.name] = lab
        else:
            parts.append(torch.randn(P, f.code_dim, device=device).repeat_interleave(2, dim=0))
            labels[f.name] = torch.full((batch_size,), -1, dtype=torch.long, device=device)
    parts.append(torch.randn(batch_size, config.noise_dim, device=device))
    pairs = torch.arange(batch_size, device=device).view(P, 2)
    return CodeBatch(z=torch.cat(parts, 1), labels=labels, labelled=labelled, pairs=pairs)
