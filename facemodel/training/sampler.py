"""A resumable, seeded epoch sampler (no DataLoader state to lose on resume)."""

from __future__ import annotations

import numpy as np

__all__ = ["EpochSampler"]


class EpochSampler:
    """Yields batches of dataset positions; each epoch is a fresh permutation.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, and the state is two
    integers, so a resumed run draws exactly the batches an uninterrupted run would.
    With ``world_size > 1`` each rank takes every ``world_size``-th position.

    Args:
        n: dataset size; batch_size: rows per batch (per rank); seed: base seed.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        if n < batch_size * world_size:
            raise ValueError(f"dataset of {n} meshes is smaller than one global batch ({batch_size * world_size})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[self.rank :: self.world_size]

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.position / len(self._perm)

    def next(self) -> np.ndarray:
        """(batch_size,) int64 dataset positions; the tail of an epoch is dropped."""
        if self.position + self.batch_size > len(self._perm):
            self.epoch += 1
            self.position = 0
            self._perm = self._permutation(self.epoch)
        out = self._perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)
