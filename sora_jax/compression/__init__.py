"""Model compression with qwix: int8/int4 weight PTQ, quantization-aware training, LoRA / QLoRA."""

from sora_jax.compression.lora import (
    LORA_TARGETS,
    init_lora_params,
    join_params,
    lora_model,
    lora_optimizer,
    merge_lora,
    optimizer_state_bytes,
    split_trainable,
    trainable_mask,
)
from sora_jax.compression.providers import QUANTIZED_LAYERS, SCHEMES
from sora_jax.compression.ptq import (
    param_bytes,
    quantize_model,
    quantized_model,
    restore_quantized_params,
    save_quantized_params,
)
from sora_jax.compression.qat import qat_model

__all__ = [
    "LORA_TARGETS", "QUANTIZED_LAYERS", "SCHEMES", "init_lora_params", "join_params", "lora_model", "lora_optimizer",
    "merge_lora", "optimizer_state_bytes", "param_bytes", "qat_model", "quantize_model", "quantized_model",
    "restore_quantized_params", "save_quantized_params", "split_trainable", "trainable_mask",
]
