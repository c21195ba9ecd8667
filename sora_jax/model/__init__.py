"""The T5-family encoder-decoder model: config and presets, the Flax module, decoder-input helpers."""

from sora_jax.model.config import PRESETS, ModelConfig
from sora_jax.model.masks import shift_right, shift_right_packed
from sora_jax.model.transformer import EncoderDecoder

__all__ = ["PRESETS", "EncoderDecoder", "ModelConfig", "shift_right", "shift_right_packed"]
