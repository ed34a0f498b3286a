"""Networks used at inference: the generator, its configuration and its interface."""

from .config import Factor, GeneratorConfig
from .generator import Generator, HiddenLayer, OutputLayer
from .interface import GeneratorInterface

__all__ = ["Factor", "GeneratorConfig", "Generator", "GeneratorInterface", "HiddenLayer", "OutputLayer"]
