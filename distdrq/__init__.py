"""distdrq: distributed DrQ-v2 from pixels on the DeepMind Control Suite."""

__version__ = "0.1.0"
