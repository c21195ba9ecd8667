"""Quantization-aware training (qwix QT): fake-quantized weights in the forward pass, straight-through grads.

`qat_model(model, scheme)` takes and returns the same float params as `model`, so it drops into the train step
unchanged (`train_step(..., model=qat_model(model, "int8"))`, or `TrainingSetup.model`). Each weight matmul
quantizes its kernel on the fly exactly as `ptq.quantize_model` stores it (per output channel, absmax), and the
backward pass uses the float kernel and activations (qwix's `use_original_residuals`), i.e. the quantizer is
the identity for gradients. After training, `quantize_model(model, params, scheme)` gives the int model whose
logits match what QAT trained.
"""

from __future__ import annotations

import qwix

from sora_jax.compression import providers
from sora_jax.model import EncoderDecoder


def qat_model(model: EncoderDecoder, scheme: str) -> EncoderDecoder:
    """`model` with every matmul weight fake-quantized to `scheme` ("int8" or "int4") during apply."""
    rule = qwix.QtRule(module_path=providers.layer_path_regex(providers.QUANTIZED_LAYERS),
                       weight_qtype=providers.qtype(scheme))
    return providers.intercept(model, qwix.QtProvider([rule]))
