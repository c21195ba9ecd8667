"""Teacher-forced logits of a batch and cross-entropy over its target tokens: summed per batch, so that callers
divide by the total token weight once. Shared by the train step and the eval step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sora_jax.model.masks import shift_right_packed
from sora_jax.model.transformer import EncoderDecoder


def teacher_forced_logits(model: EncoderDecoder, params: Any, batch: dict[str, jax.Array], *,
                          dropout_rng: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits for a (packed or padded) batch."""
    decoder_inputs = shift_right_packed(batch["decoder_target_tokens"], batch["decoder_segment_ids"],
                                        model.config.decoder_start_id)
    return model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        decoder_inputs,
        encoder_segment_ids=batch["encoder_segment_ids"],
        decoder_segment_ids=batch["decoder_segment_ids"],
        encoder_positions=batch["encoder_positions"],
        decoder_positions=batch["decoder_positions"],
        enable_dropout=dropout_rng is not None,
        rngs={"dropout": dropout_rng} if dropout_rng is not None else None,
    )


def target_weights(batch: dict[str, jax.Array]) -> jax.Array:
    """1.0 on real target tokens, 0.0 on padding."""
    return (batch["decoder_segment_ids"] > 0).astype(jnp.float32)


def token_losses(logits_BLV: jax.Array, targets_BL: jax.Array, *, label_smoothing: float = 0.0,
                 z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy (with optional label smoothing) plus z-loss, and the z-loss part alone.

    z-loss (z * logsumexp(logits)**2, from PaLM/T5X) keeps the softmax normaliser near 1, which stabilises
    bfloat16 training.
    """
    logits_BLV = logits_BLV.astype(jnp.float32)
    vocab = logits_BLV.shape[-1]
    labels_BLV = jax.nn.one_hot(targets_BL, vocab, dtype=jnp.float32)
    if label_smoothing:
        labels_BLV = optax.smooth_labels(labels_BLV, label_smoothing)
    ce_BL = optax.softmax_cross_entropy(logits_BLV, labels_BLV)
    z_BL = z_loss * jnp.square(jax.nn.logsumexp(logits_BLV, axis=-1))
    return ce_BL + z_BL, z_BL


def loss_sums(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array, *,
              label_smoothing: float = 0.0, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Weighted sums over a batch: loss, z-loss, correct tokens, and the total weight (number of tokens)."""
    losses_BL, z_BL = token_losses(logits_BLV, targets_BL, label_smoothing=label_smoothing, z_loss=z_loss)
    correct_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    # `where`, not a product, so that a non-finite value in a padding row cannot leak into the sums.
    def weighted_sum(x_BL: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(weights_BL > 0, x_BL * weights_BL, 0.0))

    return {
        "loss_sum": weighted_sum(losses_BL),
        "z_loss_sum": weighted_sum(z_BL),
        "correct_sum": weighted_sum(correct_BL),
        "weight_sum": jnp.sum(weights_BL),
    }
