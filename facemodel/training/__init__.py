"""Training of the decoupled GAN (``python -m facemodel.training`` / ``facemodel train``).

Imports the networks, data and evaluation packages; nothing outside ``training`` imports it.
Its names load on first use, so that ``facemodel train --help`` (which only needs the argument
parser in :mod:`facemodel.training.cli`) imports neither the configs, the loss terms nor the loop.
"""

__all__ = ["FactorSpec", "TrainConfig", "Trainer", "load_config"]

_LAZY = {"FactorSpec": ".config", "TrainConfig": ".config", "load_config": ".config", "Trainer": ".loop"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
