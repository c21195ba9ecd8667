"""Knowledge distillation loss: temperature-softened KL(teacher || student) mixed with hard-label cross-entropy."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sora_jax.errors import SoraError
from sora_jax.model.loss import token_losses


def _check(temperature: Any, alpha: Any) -> None:
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature <= 0:
        raise SoraError(f"distillation temperature must be a finite number > 0, got {temperature!r}; use e.g. 2.0.")
    if not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise SoraError(f"distillation alpha must be in [0, 1], got {alpha!r}; use e.g. 0.5 (1 = teacher only).")


def soft_target_sum(student_logits_BLV: jax.Array, teacher_logits_BLV: jax.Array, weights_BL: jax.Array, *,
                    temperature: float) -> jax.Array:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over target tokens weighted by `weights_BL`
    (0 for padding); no gradient flows into the teacher."""
    teacher_BLV = jax.lax.stop_gradient(teacher_logits_BLV).astype(jnp.float32)
    student_logp_BLV = jax.nn.log_softmax(student_logits_BLV.astype(jnp.float32) / temperature, axis=-1)
    teacher_logp_BLV = jax.nn.log_softmax(teacher_BLV / temperature, axis=-1)
    kl_BL = optax.losses.kl_divergence_with_log_targets(student_logp_BLV, teacher_logp_BLV) * temperature**2
    return _weighted_sum(kl_BL, weights_BL)


def _weighted_sum(x_BL: jax.Array, weights_BL: jax.Array) -> jax.Array:
    # `where`, not a product, so that a non-finite value in a padding row cannot leak into the sums.
    return jnp.sum(jnp.where(weights_BL > 0, x_BL * weights_BL, 0.0))


def distillation_loss(student_logits_BLV: jax.Array, teacher_logits_BLV: jax.Array, targets_BL: jax.Array,
                      weights_BL: jax.Array, *, temperature: float,
                      alpha: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, targets).

    Both terms are means over target tokens weighted by `weights_BL` (0 for padding). The T^2 factor keeps the
    soft term's gradients on the scale of the hard term's as T changes (Hinton et al., 2015). No gradient
    flows into the teacher. aux holds the two means ("kl" already times T^2, "ce") and the weighted sums
    ("kl_sum", "ce_sum", "weight_sum") for token-weighted accumulation over microbatches. The train step
    computes the same sums, taking the CE from its own `loss_sums`.
    """
    _check(temperature, alpha)
    kl_sum = soft_target_sum(student_logits_BLV, teacher_logits_BLV, weights_BL, temperature=temperature)
    ce_BL, _ = token_losses(student_logits_BLV.astype(jnp.float32), targets_BL)
    ce_sum = _weighted_sum(ce_BL, weights_BL)
    weight_sum = jnp.sum(weights_BL).astype(jnp.float32)
    denominator = jnp.maximum(weight_sum, 1e-9)
    kl, ce = kl_sum / denominator, ce_sum / denominator
    loss = alpha * kl + (1.0 - alpha) * ce
    return loss, {"kl": kl, "ce": ce, "kl_sum": kl_sum, "ce_sum": ce_sum, "weight_sum": weight_sum}
