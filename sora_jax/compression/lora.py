"""LoRA and QLoRA fine-tuning through qwix: low-rank adapters on the matmul weights of a frozen base.

qwix adds, next to each adapted kernel W, `kernel_lora_a` [in, r] (he-uniform) and `kernel_lora_b` [r, out]
(zeros) in the same module, and computes x @ W + (alpha / r) * (x @ A) @ B; "in" and "out" are W's
contracted and kept dimensions flattened (scanned layers add a leading layer axis to both). A fresh adapter
is therefore an exact no-op. With `base_scheme` the frozen base is stored quantized (QLoRA: int8/int4
kernels, float adapters).

Typical use (float base; the train step is unchanged):
    lmodel = lora_model(model, rank=8, alpha=16.0)
    params = init_lora_params(lmodel, base_params, jax.random.key(0))
    tx = lora_optimizer(optax.adamw(...), params)      # state only for adapters (+ norms if asked)
    ... train with model=lmodel, tx=tx ...
    plain = merge_lora(params, alpha=16.0)             # EncoderDecoder(config) params again
A quantized base cannot go through `jax.grad` (its leaves are integers): differentiate the `trainable` half of
`split_trainable(params)` and rebuild the full tree with `join_params` inside the loss.

The LM head is not adaptable: qwix 0.1.8's LoRA einsum (the head is an einsum) stores an attribute on the
module it runs in, which a Linen module forbids outside setup.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import qwix

from sora_jax.compression import providers
from sora_jax.compression.names import LORA_TARGETS
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


def _check_options(rank: Any, alpha: Any, targets: Sequence[str]) -> None:
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank <= 0:
        raise SoraError(f"LoRA rank must be an integer >= 1, got {rank!r}; use e.g. 8.")
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise SoraError(f"LoRA alpha must be a finite number > 0, got {alpha!r}; use e.g. 2 * rank.")
    if isinstance(targets, str) or not targets:
        raise SoraError(f"LoRA targets must be a non-empty list of layer names, got {targets!r}; use e.g. "
                        f"{list(LORA_TARGETS)}.")
    if providers.LM_HEAD in targets:
        raise SoraError(f"LoRA cannot adapt {providers.LM_HEAD!r} (the LM head is an einsum, which qwix 0.1.8 "
                        f"cannot adapt in a Linen model); choose targets among {', '.join(LORA_TARGETS)}.")
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise SoraError(f"unknown LoRA target(s) {', '.join(unknown)}; choose among {', '.join(LORA_TARGETS)}.")


def _is_adapter(path: tuple[str, ...]) -> bool:
    return path[-1].endswith(ADAPTER_SUFFIXES)


def lora_model(model: EncoderDecoder, rank: int, alpha: float, *, targets: Sequence[str] = LORA_TARGETS,
               base_scheme: str | None = None) -> EncoderDecoder:
    """`model` with rank-`rank` adapters (scale alpha / rank) on the `targets` layers of every block.

    targets: names among q, k, v, o (attention, self and cross) and wi / wi_0, wi_1 / wo (MLP). base_scheme:
    None (float base, LoRA) or "int8" / "int4" (QLoRA: every matmul weight, the LM head included, stored
    quantized). Each adapted layer needs rank < min(in, out): a full-rank adapter saves nothing, and qwix would
    then mistake an adapter of the kernel's shape for the kernel itself.
    """
    _check_options(rank, alpha, targets)
    weight_qtype = providers.qtype(base_scheme) if base_scheme is not None else None
    rules = [qwix.LoraRule(module_path=providers.layer_path_regex(targets), rank=int(rank), alpha=float(alpha),
                           weight_qtype=weight_qtype)]
    if base_scheme is not None:  # the layers without adapters are quantized too
        rules.append(providers.weight_rule(base_scheme))
    lmodel = providers.intercept(model, providers.LoraProvider(rules))
    adapters = {path: leaf for path, leaf in providers.flat(providers.abstract_params(lmodel)).items()
                if _is_adapter(path)}
    if not adapters:
        raise SoraError(f"no layer of this model matches LoRA targets {list(targets)}; choose among "
                        f"{', '.join(LORA_TARGETS)}.")
    for path in sorted({p[:-1] for p in adapters}):
        a, b = adapters[(*path, "kernel_lora_a")], adapters[(*path, "kernel_lora_b")]
        smaller = min(a.shape[-2], b.shape[-1])
        if rank >= smaller:
            raise SoraError(f"LoRA rank {rank} is not below the smaller dimension ({smaller}) of "
                            f"{'/'.join(path)}; use a rank < {smaller}.")
    return lmodel


def configured_lora_model(model: EncoderDecoder, lora_config: Any) -> EncoderDecoder:
    """`lora_model` from a run's `config.lora` block (rank, alpha, targets, base_quantization)."""
    return lora_model(model, lora_config.rank, lora_config.alpha, targets=tuple(lora_config.targets),
                      base_scheme=lora_config.base_quantization or None)


def init_lora_params(lmodel: EncoderDecoder, params: Any, rng: jax.Array) -> Any:
    """`params` (the base model's float params, or already quantized ones for QLoRA) plus fresh adapters.

    Base leaves are returned as they are (the same arrays); for a QLoRA model float params are quantized first.
    """
    base = providers.flat(params)
    if not any(isinstance(x, providers.WithAux) for x in base.values()):
        float_model = EncoderDecoder(lmodel.config)
        providers.check_float_params(float_model, params)
        if any(isinstance(x, providers.WithAux) for x in providers.flat(providers.abstract_params(lmodel)).values()):
            base = providers.flat(providers.quantize_base(float_model, lmodel, params))
    tokens = jnp.zeros((1, 8), jnp.int32)

    @jax.jit
    def create(params: Any, rng: jax.Array) -> Any:
        # Applying with a mutable "params" collection creates the missing adapter params (and only those).
        _, variables = lmodel.apply({"params": params}, tokens, tokens, mutable=["params"], rngs={"params": rng})
        return {p: x for p, x in providers.flat(variables["params"]).items() if _is_adapter(p)}

    return providers.unflat({**base, **create(providers.unflat(base), rng)})


def _is_trainable(path: tuple[str, ...], train_norms: bool) -> bool:
    return _is_adapter(path) or (train_norms and path[-1] == "scale" and path[-2].endswith("norm"))


def trainable_mask(params: Any, *, train_norms: bool = False) -> Any:
    """A tree of bools over `params` (a quantized kernel is one leaf): True for adapters, and for the RMS norm
    scales when `train_norms`."""
    return providers.unflat({p: _is_trainable(p, train_norms) for p in providers.flat(params)})


def lora_optimizer(tx: optax.GradientTransformation, params: Any, *,
                   train_norms: bool = False) -> optax.GradientTransformation:
    """`tx` on the trainable params only; every other update is zero, and no optimizer state is kept for them."""
    labels = jax.tree.map(lambda train: "train" if train else "frozen", trainable_mask(params, train_norms=train_norms))
    return optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)


def split_trainable(params: Any, *, train_norms: bool = False) -> tuple[Any, Any]:
    """(trainable, frozen): two disjoint nested dicts whose union is `params`; differentiate the first."""
    items = providers.flat(params)
    trainable = {p: x for p, x in items.items() if _is_trainable(p, train_norms)}
    frozen = {p: x for p, x in items.items() if p not in trainable}
    return providers.unflat(trainable), providers.unflat(frozen)


def join_params(trainable: Any, frozen: Any) -> Any:
    """Inverse of `split_trainable`."""
    return providers.unflat({**providers.flat(frozen), **providers.flat(trainable)})


def merge_lora(params: Any, *, alpha: float) -> Any:
    """Folds every adapter into its kernel: W + (alpha / r) * A @ B -> plain params of the base model.

    `alpha` is the one given to `lora_model`. A quantized base (QLoRA) is dequantized first, so the result is
    always float params for `EncoderDecoder(config)`, ready for export, decoding or `quantize_model`.
    """
    items = {p: qwix.dequantize(x.array) if isinstance(x, providers.WithAux) else x
             for p, x in providers.flat(params).items()}
    out = {p: x for p, x in items.items() if not _is_adapter(p)}
    for path in sorted({p[:-1] for p in items if _is_adapter(p)}):
        a, b = items[(*path, "kernel_lora_a")], items[(*path, "kernel_lora_b")]
        kernel = items[(*path, "kernel")]
        # A spans the kernel's leading (contracted) dims and B its trailing ones, after any layer axis.
        lead = a.ndim - 2
        if a.shape[-2] * b.shape[-1] != int(np.prod(kernel.shape[lead:])):
            raise SoraError(f"adapter of {'/'.join(path)} does not fit its kernel {kernel.shape}; pass params "
                            "made by init_lora_params.")
        delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) * (alpha / a.shape[-1])
        merged = kernel.astype(jnp.float32) + delta.reshape(kernel.shape)
        out[(*path, "kernel")] = merged.astype(kernel.dtype)
    return providers.unflat(out)
