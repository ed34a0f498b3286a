"""Evaluation metrics (paper §5.3).

The metrics load on first use, so ``facemodel.evaluation.cli`` (the ``facemodel evaluate``
parser) imports no torch-heavy module.
"""

from __future__ import annotations

import importlib

__all__ = ["diversity", "mean_vertex_distance", "specificity"]


def __getattr__(name: str):
    if name in __all__:
        value = getattr(importlib.import_module(".metrics", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
