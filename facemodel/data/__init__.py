"""Data: the ICT-FaceKit source, the ICT 4D dataset builder, imports and the Dataset.

The names below load on first use (PEP 562), so that ``facemodel.data.random_expressions`` (the
SDK's random-expression sampler, NumPy only) and ``facemodel.data.expressions`` import without the
builder's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ICTDatasetConfig": "builder",
    "ICTFaceGenerator": "builder",
    "build_ict_dataset": "builder",
    "plan_ict_dataset": "builder",
    "FaceDataset": "dataset",
    "import_scans": "generic",
    "EXPRESSION_LABELS": "expressions",
    "ICT_BLENDSHAPES": "expressions",
    "ICTSource": "ict",
    "Manifest": "store",
    "read_manifest": "store",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
