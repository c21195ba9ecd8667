"""The eval step: summed teacher-forced loss and token accuracy of a batch, compiled once per model and mesh."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from sora_jax import sharding
from sora_jax.model import EncoderDecoder
from sora_jax.model.loss import loss_sums, target_weights, teacher_forced_logits


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: EncoderDecoder) -> dict[str, jax.Array]:
    """Summed cross-entropy (no smoothing, no z-loss), correct tokens and token count of a batch."""
    logits_BLV = teacher_forced_logits(model, params, batch)
    return loss_sums(logits_BLV, batch["decoder_target_tokens"], target_weights(batch))


def compile_eval_step(model: EncoderDecoder, param_shardings: Any, mesh: jax.sharding.Mesh) -> Callable:
    """jit the eval step: params keep their shardings, batch over the data axes, sums replicated."""
    return jax.jit(functools.partial(eval_step, model=model),
                   in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
