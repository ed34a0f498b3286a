"""Training of the decoupled GAN (``python -m facemodel.training`` / ``facemodel train``).

Imports the networks, data and evaluation packages; nothing outside ``training`` imports it.
"""

from .config import FactorSpec, TrainConfig, load_config
from .loop import Trainer

__all__ = ["FactorSpec", "TrainConfig", "Trainer", "load_config"]
