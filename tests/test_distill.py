"""Distillation loss against a KL and a cross-entropy written out by hand in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.errors import SoraError
from sora_jax.training.distill import distillation_loss

# Batch 2, length 3, vocab 4; the last token of row 1 is padding (weight 0) and holds garbage logits.
STUDENT = np.array([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-2.0, 1.0, 3.0, 0.0]],
                    [[1.0, 1.0, 1.0, 1.0], [0.0, -1.0, 2.0, 0.5], [np.nan, np.inf, 1e30, -np.inf]]], np.float32)
TEACHER = np.array([[[1.0, 0.0, 0.0, -1.0], [0.5, 0.5, -0.5, 2.0], [0.0, 0.0, 4.0, 1.0]],
                    [[3.0, -1.0, 0.0, 0.0], [0.2, 0.1, 1.0, 0.0], [np.inf, 0.0, 0.0, 0.0]]], np.float32)
TARGETS = np.array([[0, 3, 2], [1, 2, 0]], np.int32)
WEIGHTS = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], np.float32)


def by_hand(temperature: float, alpha: float) -> tuple[float, float, float]:
    """Loops over the real tokens: sum_v p_t(v) * (log p_t(v) - log p_s(v)) * T^2, and -log softmax(s)[y]."""
    kls, ces = [], []
    for b in range(2):
        for t in range(3):
            if WEIGHTS[b, t] == 0:
                continue
            s, te = STUDENT[b, t].astype(np.float64), TEACHER[b, t].astype(np.float64)
            p_s = np.exp(s / temperature) / np.exp(s / temperature).sum()
            p_t = np.exp(te / temperature) / np.exp(te / temperature).sum()
            kls.append(temperature**2 * sum(p_t[v] * (np.log(p_t[v]) - np.log(p_s[v])) for v in range(4)))
            ces.append(-np.log(np.exp(s[TARGETS[b, t]]) / np.exp(s).sum()))
    kl, ce = np.mean(kls), np.mean(ces)
    return alpha * kl + (1 - alpha) * ce, kl, ce


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (0.5, 0.0)])
def test_matches_hand_computed_kl_and_cross_entropy(temperature, alpha):
    loss, aux = distillation_loss(jnp.asarray(STUDENT), jnp.asarray(TEACHER), jnp.asarray(TARGETS),
                                  jnp.asarray(WEIGHTS), temperature=temperature, alpha=alpha)
    want_loss, want_kl, want_ce = by_hand(temperature, alpha)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["kl"]), want_kl, rtol=1e-5)
    np.testing.assert_allclose(float(aux["ce"]), want_ce, rtol=1e-5)
    assert float(aux["weight_sum"]) == 5.0
    np.testing.assert_allclose(float(aux["kl_sum"]), 5 * want_kl, rtol=1e-5)
    assert want_kl > 0.05  # the teacher and student really disagree


def test_no_gradient_reaches_the_teacher_and_matching_logits_cost_nothing():
    student, teacher = jnp.asarray(STUDENT[:1]), jnp.asarray(TEACHER[:1])
    targets, weights = jnp.asarray(TARGETS[:1]), jnp.ones((1, 3))

    def loss(s, t):
        return distillation_loss(s, t, targets, weights, temperature=2.0, alpha=0.7)[0]

    grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(student, teacher)
    assert np.abs(np.asarray(grad_s)).max() > 1e-3
    np.testing.assert_array_equal(grad_t, np.zeros_like(grad_t))
    same, aux = distillation_loss(teacher, teacher, targets, weights, temperature=3.0, alpha=1.0)
    assert abs(float(same)) < 1e-6 and abs(float(aux["kl"])) < 1e-6


@pytest.mark.parametrize("options, match", [(dict(temperature=0.0, alpha=0.5), "temperature"),
                                            (dict(temperature=float("inf"), alpha=0.5), "temperature"),
                                            (dict(temperature=1.0, alpha=1.5), "alpha"),
                                            (dict(temperature=1.0, alpha=-0.1), "alpha")])
def test_rejects_bad_options(options, match):
    with pytest.raises(SoraError, match=match):
        distillation_loss(jnp.asarray(STUDENT), jnp.asarray(TEACHER), jnp.asarray(TARGETS), jnp.asarray(WEIGHTS),
                          **options)
