"""Cross-entropy, label smoothing, z-loss and weighted sums against a numpy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.model.loss import loss_sums, token_losses

B, L, V = 3, 5, 7


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(B, L, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, L)).astype(np.int32)
    weights = np.ones((B, L), np.float32)
    weights[0, 3:] = 0
    weights[2, 1:] = 0
    return logits, targets, weights


def _reference(logits, targets, smoothing=0.0, z=0.0):
    """Per-token loss and z-term in float64, written out by hand."""
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]
    log_p = x - lse[..., None]
    onehot = np.eye(V)[targets]
    labels = (1.0 - smoothing) * onehot + smoothing / V
    ce = -(labels * log_p).sum(-1)
    z_term = z * lse**2
    return ce + z_term, z_term


@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-1)])
def test_token_losses_match_numpy(smoothing, z):
    logits, targets, _ = _data()
    losses, z_part = token_losses(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=smoothing,
                                  z_loss=z)
    ref_losses, ref_z = _reference(logits, targets, smoothing, z)
    assert losses.shape == z_part.shape == (B, L) and losses.dtype == jnp.float32
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_part, ref_z, rtol=1e-5, atol=1e-7)
    if z == 0.0:
        assert not np.any(z_part)


def test_plain_cross_entropy_is_negative_log_prob_of_target():
    logits, targets, _ = _data(1)
    losses, _ = token_losses(jnp.asarray(logits), jnp.asarray(targets))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    picked = np.take_along_axis(p, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses, -np.log(picked), rtol=1e-5)


def test_bfloat16_logits_are_computed_in_float32():
    logits, targets, _ = _data(2)
    low = jnp.asarray(logits, jnp.bfloat16)
    losses, _ = token_losses(low, jnp.asarray(targets), z_loss=1e-3)
    assert losses.dtype == jnp.float32
    ref, _ = _reference(np.asarray(low.astype(jnp.float32)), targets, 0.0, 1e-3)
    np.testing.assert_allclose(losses, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.1, 1e-2)])
def test_loss_sums_match_numpy(smoothing, z):
    logits, targets, weights = _data(3)
    targets[1, 2] = logits[1, 2].argmax()  # make sure some tokens are predicted correctly
    sums = loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                     label_smoothing=smoothing, z_loss=z)
    ref_losses, ref_z = _reference(logits, targets, smoothing, z)
    correct = (logits.argmax(-1) == targets).astype(np.float64)
    np.testing.assert_allclose(sums["loss_sum"], (ref_losses * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["z_loss_sum"], (ref_z * weights).sum(), rtol=1e-5, atol=1e-7)
    assert float(sums["correct_sum"]) == (correct * weights).sum() >= 1
    assert float(sums["weight_sum"]) == weights.sum() == 9


def test_fractional_weights_scale_each_token():
    logits, targets, _ = _data(4)
    weights = np.random.default_rng(0).uniform(0, 2, size=(B, L)).astype(np.float32)
    sums = loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    ref, _ = _reference(logits, targets)
    np.testing.assert_allclose(sums["loss_sum"], (ref * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["weight_sum"], weights.sum(), rtol=1e-6)


def test_padding_contributes_nothing_even_if_nan():
    logits, targets, weights = _data(5)
    clean = loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2)
    poisoned = logits.copy()
    poisoned[weights == 0] = np.nan
    poisoned[0, 4, 0] = np.inf
    # Padding positions may also hold any target id (0 = pad, or garbage).
    garbage_targets = targets.copy()
    garbage_targets[weights == 0] = 0
    dirty = loss_sums(jnp.asarray(poisoned), jnp.asarray(garbage_targets), jnp.asarray(weights), z_loss=1e-2)
    ref_losses, ref_z = _reference(logits, targets, 0.0, 1e-2)
    for key in clean:
        assert np.isfinite(dirty[key]), key
        np.testing.assert_allclose(dirty[key], clean[key], rtol=1e-6)
    np.testing.assert_allclose(dirty["loss_sum"], (ref_losses * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(dirty["z_loss_sum"], (ref_z * weights).sum(), rtol=1e-5)


def test_gradient_matches_softmax_minus_labels():
    logits, targets, weights = _data(6)
    z = 1e-2

    def total(x):
        sums = loss_sums(x, jnp.asarray(targets), jnp.asarray(weights), label_smoothing=0.1, z_loss=z)
        return sums["loss_sum"]

    grad = np.asarray(jax.grad(total)(jnp.asarray(logits)))
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lse = np.log(np.exp(x).sum(-1))
    labels = 0.9 * np.eye(V)[targets] + 0.1 / V
    # d/dx [CE(x) + z * lse(x)^2] = softmax - labels + 2 z lse softmax, scaled by each token's weight.
    ref = (p - labels + 2 * z * lse[..., None] * p) * weights[..., None]
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-6)
    assert not grad[weights == 0].any()
