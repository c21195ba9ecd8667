"""Qwix providers and rules for the Sora T5: which layers are quantized or adapted, and one qwix 0.1.8 fix.

Qwix intercepts `jax.lax.dot_general` / `jnp.einsum` inside the intercepted model methods and matches each op
against rules by the path of the Linen module that runs it. In this model every weight matmul runs in its own
module: `.../{q,k,v,o}` (attention projections), `.../mlp/{wi,wi_0,wi_1,wo}` and `decoder/logits_dense` (the
untied LM head). The attention softmax einsums run in `.../self_attention` or `.../cross_attention` and never
match, so activations-by-activations products stay in float. The providers here are qwix's, with two fixes
for qwix 0.1.8 in Linen (see `_LinenFixes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import linen as nn

# qwix keeps the quantized-weight wrapper private; it is the leaf type of quantized param trees.
from qwix._src.providers.ptq import WithAux

from sora_jax.compression.names import ATTENTION_LAYERS, MLP_LAYERS, SCHEMES
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder

# Weight-only schemes: per-output-channel symmetric (absmax) scales, float32 scales, weights stored as ints.
STORAGE_TYPES: dict[str, Any] = {"int8": jnp.int8, "int4": jnp.int4}
assert tuple(STORAGE_TYPES) == SCHEMES
LM_HEAD = "logits_dense"
QUANTIZED_LAYERS = (*ATTENTION_LAYERS, *MLP_LAYERS, LM_HEAD)
# The Linen methods that run the model: training (__call__) and decoding (encode, decode).
METHODS = ("__call__", "encode", "decode")


def qtype(scheme: str) -> Any:
    """The qwix storage type of a scheme name; SoraError naming the supported ones otherwise."""
    if scheme not in SCHEMES:
        raise SoraError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}.")
    return STORAGE_TYPES[scheme]


def layer_path_regex(layers: Sequence[str]) -> str:
    """A qwix `module_path` regex matching the modules named `layers` anywhere in the model."""
    return r"(.*/)?(" + "|".join(layers) + ")"


def weight_rule(scheme: str, layers: Sequence[str] = QUANTIZED_LAYERS) -> qwix.QuantizationRule:
    """Weight-only quantization of the matmul weights of `layers`."""
    return qwix.QuantizationRule(module_path=layer_path_regex(layers), weight_qtype=qtype(scheme))


@flax.struct.dataclass
class _CastableWithAux(WithAux):
    """WithAux whose astype works in Linen: qwix 0.1.8's `WithAux.astype` hands the QArray to
    `update_boxed`, which rejects it, and `HeadProjection` casts its kernel with `.astype(dtype)`."""

    def astype(self, dtype: Any) -> WithAux:
        return WithAux(self.array.astype(dtype), self.how)


class _LinenFixes:
    """Mixin for providers that read quantized params, fixing two qwix 0.1.8 gaps for this model."""

    def nn_param(self, module: nn.Module, name: str, *args: Any, **kwargs: Any) -> Any:
        # Serve quantized kernels as _CastableWithAux, so HeadProjection's `kernel.astype(dtype)` works.
        value = super().nn_param(module, name, *args, **kwargs)
        return _CastableWithAux(value.array, value.how) if isinstance(value, WithAux) else value

    def einsum(self, einsum_str: str, *operands: Any, preferred_element_type: Any = None, **kwargs: Any) -> Any:
        # The quantized einsum drops preferred_element_type: keep the LM head's float32 logits under bfloat16.
        out = super().einsum(einsum_str, *operands, preferred_element_type=preferred_element_type, **kwargs)
        return out if preferred_element_type is None else out.astype(preferred_element_type)


class PtqProvider(_LinenFixes, qwix.PtqProvider):
    """qwix.PtqProvider with the `_LinenFixes`."""


class LoraProvider(_LinenFixes, qwix.LoraProvider):
    """qwix.LoraProvider (adapters over a float or PTQ base) with the `_LinenFixes`."""


def intercept(model: EncoderDecoder, provider: qwix.QuantizationProvider) -> EncoderDecoder:
    """`model` with qwix interception on every method the trainer and the decoders call."""
    if not isinstance(model, EncoderDecoder):
        raise SoraError(f"expected a sora_jax EncoderDecoder, got {type(model).__name__}.")
    return qwix.quantize_model(model, provider, methods=METHODS)


def abstract_params(model: EncoderDecoder) -> Any:
    """Shapes, dtypes and structure of `model.init`'s params (nothing is allocated), unboxed."""
    tokens = np.zeros((1, 8), np.int32)
    return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"])


def flat(tree: Any) -> dict[tuple[str, ...], Any]:
    """Nested param dicts -> {path: leaf}; a quantized weight (WithAux) counts as one leaf."""
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def unflat(items: dict[tuple[str, ...], Any]) -> dict:
    """Inverse of `flat`."""
    return flax.traverse_util.unflatten_dict(items)


def _scanned_stacks(model: EncoderDecoder) -> tuple[str, ...]:
    return ("encoder", "decoder") if model.config.scan_layers else ()


def check_float_params(model: EncoderDecoder, params: Any) -> None:
    """SoraError unless `params` is a float param tree of exactly `model`'s shapes."""
    want, got = flat(abstract_params(model)), flat(params)
    for path, leaf in got.items():
        if isinstance(leaf, WithAux):
            raise SoraError(f"params/{'/'.join(path)} is already quantized; pass the float params.")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        path = missing[0] if missing else extra[0]
        kind = "is missing" if missing else "is not in this model"
        raise SoraError(f"params/{'/'.join(path)} {kind}; pass the params of this model config (scan_layers "
                        f"{model.config.scan_layers}, tie_word_embeddings {model.config.tie_word_embeddings}).")
    for path, spec in want.items():
        if tuple(got[path].shape) != tuple(spec.shape):
            raise SoraError(f"params/{'/'.join(path)} has shape {tuple(got[path].shape)}, the model wants "
                            f"{tuple(spec.shape)}; pass the params of this model config.")


def quantize_base(model: EncoderDecoder, qmodel: EncoderDecoder, params: Any) -> Any:
    """Quantizes float `params` of `model` into the layout `qmodel` (a PTQ or QLoRA model) reads.

    Params of scanned layers carry a leading layer axis that qwix's recipe (`how`, made for one layer's
    kernel) does not know about, so those are quantized one layer at a time under vmap.
    """
    check_float_params(model, params)
    abstract = abstract_params(qmodel)
    scanned = _scanned_stacks(model)

    def quantize(params: Any) -> Any:
        out = {}
        for stack, sub in params.items():
            if stack in scanned:
                per_layer = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                                         abstract[stack]["layers"])
                rest = {k: v for k, v in sub.items() if k != "layers"}
                out[stack] = qwix.quantize_params(rest, abstract[stack])
                out[stack]["layers"] = jax.vmap(lambda x, spec=per_layer: qwix.quantize_params(x, spec))(sub["layers"])
            else:
                out[stack] = qwix.quantize_params({stack: sub}, abstract)[stack]
        return out

    # One compiled program instead of a few eager ops per leaf; the float params are not donated.
    return jax.jit(quantize)(params)
