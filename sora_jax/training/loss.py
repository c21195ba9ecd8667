"""Cross-entropy over target tokens: summed per batch, so that callers divide by the total token weight once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
