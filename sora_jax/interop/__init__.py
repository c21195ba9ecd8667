"""Interoperability with other T5 implementations' checkpoints (Hugging Face transformers)."""

from sora_jax.interop.hf_t5 import load_hf_t5, save_hf_t5

__all__ = ["load_hf_t5", "save_hf_t5"]
