"""Training of the decoupled GAN (``python -m facemodel.training`` / ``facemodel train``).

Imports the networks, data and evaluation packages; nothing outside ``training`` imports it.
"""

from .config import FactorSpec, TrainConfig, load_config

__all__ = ["FactorSpec", "TrainConfig", "Trainer", "load_config"]


def __getattr__(name: str):
    if name == "Trainer":  # lazy: the loop imports the whole training stack (the CLI parser does not need it)
        from .loop import Trainer

        return Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
