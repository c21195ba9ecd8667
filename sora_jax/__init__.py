"""Sora: a T5-family encoder-decoder Transformer trainer in JAX/Flax, from a laptop CPU to a TPU pod."""

from sora_jax.errors import SoraError

__all__ = ["SoraError"]
__version__ = "0.1.0"
