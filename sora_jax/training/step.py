"""The train step: a pure function of (state, batch), compiled once with explicit shardings."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from sora_jax import sharding
from sora_jax.compression.lora import join_params
from sora_jax.model import EncoderDecoder
from sora_jax.model.loss import loss_sums, target_weights, teacher_forced_logits
from sora_jax.training.distill import soft_target_sum
from sora_jax.training.state import TrainingSetup, TrainState
from sora_jax.training.teacher import Teacher


def _real_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    return jnp.sum(batch["encoder_segment_ids"] > 0) + jnp.sum(batch["decoder_segment_ids"] > 0)


def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params: Any = None, *,
               model: EncoderDecoder, tx: optax.GradientTransformation, schedule: optax.Schedule,
               label_smoothing: float, z_loss: float, grad_accum_steps: int, rng_impl: str,
               trainable: Callable[[Any], tuple[Any, Any]] | None = None, teacher_model: EncoderDecoder | None = None,
               temperature: float = 1.0, alpha: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on `batch`; with grad_accum_steps > 1, gradients are summed over microbatches.

    Losses are summed and divided by the token count of the whole batch once, so accumulation gives exactly
    the gradient of the big batch (token-weighted, not an average of microbatch means).

    trainable: `params -> (trained, frozen)` (LoRA: adapters and, if asked, norms); only the first half is
    differentiated and seen by `tx`, the frozen half comes back as it was. teacher_model (with `teacher_params`,
    never updated): the loss is `distill.distillation_loss` of the student's logits against the teacher's (no
    dropout in the teacher), plus the z-loss.
    """
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=rng_impl), state.step)
    trained, frozen = (state.params, None) if trainable is None else trainable(state.params)

    def summed_loss(trained: Any, micro: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        params = trained if trainable is None else join_params(trained, frozen)
        logits_BLV = teacher_forced_logits(model, params, micro, dropout_rng=rng)
        weights_BL = target_weights(micro)
        sums = loss_sums(logits_BLV, micro["decoder_target_tokens"], weights_BL,
                         label_smoothing=label_smoothing, z_loss=z_loss)
        if teacher_model is not None:
            teacher_BLV = teacher_forced_logits(teacher_model, teacher_params, micro)
            kl_sum = soft_target_sum(logits_BLV, teacher_BLV, weights_BL, temperature=temperature)
            # loss_sums' cross-entropy, not a second one: label smoothing is refused with distillation.
            ce_sum = sums["loss_sum"] - sums["z_loss_sum"]
            sums = {**sums, "kl_sum": kl_sum, "ce_sum": ce_sum,
                    "loss_sum": alpha * kl_sum + (1.0 - alpha) * ce_sum + sums["z_loss_sum"]}
        return sums["loss_sum"], sums

    grad_fn = jax.grad(summed_loss, has_aux=True)
    if grad_accum_steps == 1:
        grads, sums = grad_fn(trained, batch, step_rng)
    else:
        # Row i of microbatch k is row i*A + k of the batch: each device keeps its own rows (no reshuffle).
        def split(x: jax.Array) -> jax.Array:
            x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:])
            return jnp.swapaxes(x, 0, 1)

        micros = jax.tree.map(split, batch)

        def accumulate(carry: tuple[Any, dict], xs: tuple[dict, jax.Array]) -> tuple[tuple[Any, dict], None]:
            micro, index = xs
            micro = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("batch", "length")), micro)
            grads, sums = grad_fn(trained, micro, jax.random.fold_in(step_rng, index))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zeros = jax.tree.map(jnp.zeros_like, trained)
        keys = ("loss_sum", "z_loss_sum", "correct_sum", "weight_sum") + (
            ("kl_sum", "ce_sum") if teacher_model is not None else ())
        zero_sums = {k: jnp.zeros((), jnp.float32) for k in keys}
        (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums),
                                        (micros, jnp.arange(grad_accum_steps)))

    weight = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    trained = optax.apply_updates(trained, updates)
    params = trained if trainable is None else join_params(trained, frozen)
    metrics = {
        "loss": sums["loss_sum"] / weight,
        "z_loss": sums["z_loss_sum"] / weight,
        "token_accuracy": sums["correct_sum"] / weight,
        "grad_norm": optax.tree.norm(grads),
        # One cheap reduction that catches an update which overflowed the params, before they are saved; over
        # the trained half only, as the frozen one does not change (and under QLoRA holds integers).
        "param_norm": optax.tree.norm(trained),
        "learning_rate": schedule(state.step),
        "tokens": _real_tokens(batch).astype(jnp.float32),
    }
    if teacher_model is not None:
        metrics.update(kl=sums["kl_sum"] / weight, ce=sums["ce_sum"] / weight)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the train step takes from the run config besides the model and optimizer."""

    label_smoothing: float = 0.0
    z_loss: float = 0.0
    grad_accum_steps: int = 1

    @classmethod
    def from_config(cls, config: Any) -> StepOptions:
        """The options of a validated run config (`config.loss`, `config.grad_accum_steps`)."""
        return cls(label_smoothing=config.loss.label_smoothing, z_loss=config.loss.z_loss,
                   grad_accum_steps=config.grad_accum_steps)


def compile_train_step(setup: TrainingSetup, options: StepOptions, mesh: jax.sharding.Mesh,
                       teacher: Teacher | None = None) -> Callable:
    """jit the train step with the state's shardings in and out, the batch over the data axes, state donated.

    With a teacher, the compiled step takes the teacher's params as a third argument (sharded, not donated).
    """
    state_shardings = setup.state_shardings
    distill = {} if teacher is None else {"teacher_model": teacher.model, "temperature": teacher.temperature,
                                          "alpha": teacher.alpha}
    step = functools.partial(train_step, model=setup.model, tx=setup.tx, schedule=setup.schedule,
                             label_smoothing=options.label_smoothing, z_loss=options.z_loss,
                             grad_accum_steps=options.grad_accum_steps, rng_impl=setup.rng_impl,
                             trainable=setup.trainable, **distill)
    in_shardings = (state_shardings, sharding.batch_sharding(mesh))
    if teacher is not None:
        in_shardings += (teacher.param_shardings,)
    return jax.jit(step, in_shardings=in_shardings, out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=0)
