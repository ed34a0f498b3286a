"""Networks used at inference: the generator and its configuration."""

from .config import Factor, GeneratorConfig
from .generator import Generator

__all__ = ["Factor", "GeneratorConfig", "Generator"]
