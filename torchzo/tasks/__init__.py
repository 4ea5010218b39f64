"""Problem classes: built-in objectives for demos, tests, benchmarks and meta-training."""
from .quadratic import Quadratic

__all__ = ["Quadratic"]
