"""Model compression with qwix: int8/int4 weight PTQ, quantization-aware training, LoRA / QLoRA.

The public names load their module on first use, so that `compression.names` (read by the config checks) does
not import qwix.
"""

import importlib

from sora_jax.compression.names import LORA_TARGETS, SCHEMES

_HOMES = {
    "init_lora_params": "lora", "join_params": "lora", "lora_model": "lora", "lora_optimizer": "lora",
    "merge_lora": "lora", "split_trainable": "lora", "trainable_mask": "lora",
    "QUANTIZED_LAYERS": "providers",
    "quantize_model": "ptq", "quantized_model": "ptq", "restore_quantized_params": "ptq",
    "save_quantized_params": "ptq", "qat_model": "qat",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"sora_jax.compression.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'sora_jax.compression' has no attribute {name!r}")


__all__ = ["LORA_TARGETS", "SCHEMES", *_HOMES]
