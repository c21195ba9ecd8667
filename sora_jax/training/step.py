"""The train step: a pure function of (state, batch), compiled once with explicit shardings."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sora_jax import sharding
from sora_jax.model import EncoderDecoder
from sora_jax.model.loss import loss_sums, target_weights, teacher_forced_logits
from sora_jax.training.state import TrainingSetup, TrainState


def _real_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    return jnp.sum(batch["encoder_segment_ids"] > 0) + jnp.sum(batch["decoder_segment_ids"] > 0)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: EncoderDecoder,
               tx: optax.GradientTransformation, schedule: optax.Schedule, label_smoothing: float,
               z_loss: float, grad_accum_steps: int, rng_impl: str) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on `batch`; with grad_accum_steps > 1, gradients are summed over microbatches.

    Losses are summed and divided by the token count of the whole batch once, so accumulation gives exactly
    the gradient of the big batch (token-weighted, not an average of microbatch means).
    """
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=rng_impl), state.step)

    def summed_loss(params: Any, micro: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        logits_BLV = teacher_forced_logits(model, params, micro, dropout_rng=rng)
        sums = loss_sums(logits_BLV, micro["decoder_target_tokens"], target_weights(micro),
                         label_smoothing=label_smoothing, z_loss=z_loss)
        return sums["loss_sum"], sums

    grad_fn = jax.grad(summed_loss, has_aux=True)
    if grad_accum_steps == 1:
        grads, sums = grad_fn(state.params, batch, step_rng)
    else:
        # Row i of microbatch k is row i*A + k of the batch: each device keeps its own rows (no reshuffle).
        def split(x: jax.Array) -> jax.Array:
            x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:])
            return jnp.swapaxes(x, 0, 1)

        micros = jax.tree.map(split, batch)

        def accumulate(carry: tuple[Any, dict], xs: tuple[dict, jax.Array]) -> tuple[tuple[Any, dict], None]:
            micro, index = xs
            micro = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("batch", "length")), micro)
            grads, sums = grad_fn(state.params, micro, jax.random.fold_in(step_rng, index))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "z_loss_sum", "correct_sum", "weight_sum")}
        (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums),
                                        (micros, jnp.arange(grad_accum_steps)))

    weight = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": sums["loss_sum"] / weight,
        "z_loss": sums["z_loss_sum"] / weight,
        "token_accuracy": sums["correct_sum"] / weight,
        "grad_norm": optax.tree.norm(grads),
        # One cheap reduction that catches an update which overflowed the params, before they are saved.
        "param_norm": optax.tree.norm(params),
        "learning_rate": schedule(state.step),
        "tokens": _real_tokens(batch).astype(jnp.float32),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_train_step(setup: TrainingSetup, config: Any, mesh: jax.sharding.Mesh) -> Callable:
    """jit the train step with the state's shardings in and out, the batch over the data axes, state donated."""
    state_shardings = setup.state_shardings
    step = functools.partial(train_step, model=setup.model, tx=setup.tx, schedule=setup.schedule,
                             label_smoothing=config.loss.label_smoothing, z_loss=config.loss.z_loss,
                             grad_accum_steps=config.grad_accum_steps, rng_impl=setup.rng_impl)
    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
