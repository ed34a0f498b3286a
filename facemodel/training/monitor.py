"""What a run records as it goes: ``metrics.jsonl`` lines, and in-training figures (specificity and
diversity, mm, of generators against fixed data meshes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._fs import atomic_file
from ..data.dataset import FaceDataset
from ..evaluation.metrics import diversity, specificity

__all__ = ["Monitor", "append_record", "truncate_records"]


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to a metrics log."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_records(path: Path, step: int) -> None:
    """Drop the lines of a metrics log written after ``step`` (by a run killed after its checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        with atomic_file(path, "w") as f:
            f.write("".join(line + "\n" for line in keep))


def _reference(ds: FaceDataset, n: int, seed: int) -> torch.Tensor | None:
    """Up to ``n`` meshes (mm, CPU) of a split, a fixed random subset (None: an empty split)."""
    if len(ds) == 0:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(len(ds), n), replace=False))
    return torch.from_numpy(ds.vertices(rows))


class Monitor:
    """Fixed reference meshes (2,000 training, 1,000 validation; read on first use) and the
    figures of generators against them.

    Args:
        train: the training split; data: the dataset folder (for the validation split).
        template: (V, 3) template vertices, mm, on the generators' device.
        samples: generated meshes per figure; seed: the reference subsets' seed.
    """

    def __init__(self, train: FaceDataset, data: str, template: torch.Tensor, *, samples: int, seed: int) -> None:
        self.train, self.data, self.template = train, data, template
        self.samples, self.seed = samples, seed
        self._ref: tuple[torch.Tensor | None, torch.Tensor | None] | None = None

    @torch.no_grad()
    def evaluate(self, generators: dict[str, torch.nn.Module], code_dim: int) -> dict[str, Any]:
        """``{"data": ..., name: ...}`` offset, specificity and diversity (mm) per generator.

        ``specificity_mm`` is measured against training meshes, ``val_specificity_mm``
        against the validation split (identities never trained on): the convergence
        curve to watch. ``data`` gives the same figures for the training meshes.
        """
        n = self.samples
        if self._ref is None:
            self._ref = (_reference(self.train, 2000, self.seed), _reference(FaceDataset(self.data, split="val"), 1000, self.seed))
        ref, val = self._ref
        tpl = self.template.cpu()
        g = torch.Generator().manual_seed(1234)
        result: dict[str, Any] = {"data": {"diversity_mm": diversity(ref, 4000, generator=g),
                                           "offset_mm": float((ref - tpl).norm(dim=-1).mean())}}  # fmt: skip
        if val is not None:
            result["data"]["val_specificity_mm"] = float(specificity(val[:n], ref).mean())
        for name, G in generators.items():
            z = torch.randn(n, code_dim, generator=g).to(self.template.device)
            v = (G(z).float() + self.template).cpu()
            result[name] = {
                "offset_mm": float((v - tpl).norm(dim=-1).mean()),  # distance from the template
                "specificity_mm": float(specificity(v, ref).mean()),
                "diversity_mm": diversity(v, 4000, generator=g),
            }
            if val is not None:
                result[name]["val_specificity_mm"] = float(specificity(v, val).mean())
        return result
