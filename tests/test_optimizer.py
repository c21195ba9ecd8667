"""Learning-rate schedules, the optimizers' weight-decay mask and clipping, and gradient accumulation."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sora_jax.config import base_config
from sora_jax.data.pipeline import BATCH_KEYS
from sora_jax.evaluation.eval_step import eval_step
from sora_jax.model import PRESETS, EncoderDecoder, ModelConfig
from sora_jax.model.loss import teacher_forced_logits
from sora_jax.training.optimizer import learning_rate_schedule, make_optimizer
from sora_jax.training.state import TrainState
from sora_jax.training.step import train_step


def _opt_cfg(**changes):
    cfg = base_config().optimizer
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def _values(schedule, steps):
    return np.array([float(schedule(jnp.asarray(s, jnp.int32))) for s in steps])


@pytest.mark.parametrize("kind", ["cosine", "rsqrt", "constant"])
def test_warmup_is_linear_from_zero_to_peak(kind):
    peak, warmup = 2e-3, 10
    schedule = learning_rate_schedule(_opt_cfg(schedule=kind, learning_rate=peak, warmup_steps=warmup), 100)
    steps = np.arange(warmup + 1)
    np.testing.assert_allclose(_values(schedule, steps), peak * steps / warmup, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("factor", [0.0, 0.1])
def test_cosine_decays_to_end_factor(factor):
    peak, warmup, total = 1e-3, 10, 110
    cfg = _opt_cfg(schedule="cosine", learning_rate=peak, warmup_steps=warmup,
                   end_learning_rate_factor=factor)
    schedule = learning_rate_schedule(cfg, total)
    steps = np.arange(warmup, total + 1, 7)
    steps = np.append(steps, total)
    progress = (steps - warmup) / (total - warmup)
    ref = peak * (factor + (1 - factor) * 0.5 * (1 + np.cos(np.pi * progress)))
    np.testing.assert_allclose(_values(schedule, steps), ref, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(_values(schedule, [total, total + 50]), [peak * factor] * 2, rtol=1e-5,
                               atol=1e-12)
    np.testing.assert_allclose(_values(schedule, [warmup + (total - warmup) // 2]),
                               [peak * (factor + (1 - factor) / 2)], rtol=1e-5)


def test_rsqrt_after_warmup():
    peak, warmup = 1e-2, 16
    cfg = _opt_cfg(schedule="rsqrt", learning_rate=peak, warmup_steps=warmup)
    schedule = learning_rate_schedule(cfg, 1000)
    steps = np.array([warmup, warmup + 1, 2 * warmup, 4 * warmup, 100 * warmup])
    np.testing.assert_allclose(_values(schedule, steps), peak * np.sqrt(warmup / steps), rtol=1e-5)
    # Continuous at the end of warmup: the steps on either side differ by about one warmup increment.
    before, at, after = _values(schedule, [warmup - 1, warmup, warmup + 1])
    assert at == pytest.approx(peak, rel=1e-6)
    assert at - before == pytest.approx(peak / warmup, rel=1e-5)
    assert 0 < at - after < peak / warmup


def test_constant_after_warmup():
    schedule = learning_rate_schedule(_opt_cfg(schedule="constant", learning_rate=5e-4, warmup_steps=3), 50)
    np.testing.assert_allclose(_values(schedule, [3, 4, 20, 50, 500]), [5e-4] * 5, rtol=1e-6)


@pytest.mark.parametrize("kind", ["constant", "cosine", "rsqrt"])
def test_no_warmup_starts_at_peak(kind):
    peak, total = 1e-3, 100
    schedule = learning_rate_schedule(_opt_cfg(schedule=kind, learning_rate=peak, warmup_steps=0), total)
    steps = np.array([0, 1, 3, 50, total])
    ref = {
        "constant": np.full(5, peak),
        "cosine": peak * 0.5 * (1 + np.cos(np.pi * steps / total)),
        "rsqrt": peak / np.sqrt(steps + 1),
    }[kind]
    np.testing.assert_allclose(_values(schedule, steps), ref, rtol=1e-5, atol=1e-12)


def _params():
    rng = np.random.default_rng(0)
    return {
        "dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)},
        "norm": {"scale": jnp.asarray(rng.normal(size=(4,)) + 1, jnp.float32)},
        "stack": {"kernel": jnp.asarray(rng.normal(size=(2, 3, 2)), jnp.float32)},
    }


def test_adamw_decays_matrices_only():
    lr, wd = 0.1, 0.5
    cfg = _opt_cfg(name="adamw", weight_decay=wd, grad_clip_norm=0.0)
    tx = make_optimizer(cfg, lambda step: lr)
    params = _params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(zeros, state, params)
        new = optax.apply_updates(params, updates)
        # Zero gradients: the Adam part is 0, so only decoupled decay p <- p - lr * wd * p remains.
        np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])
        for name in ("dense", "stack"):
            np.testing.assert_allclose(new[name]["kernel"], params[name]["kernel"] * (1 - lr * wd), rtol=1e-6)
        params = new


def test_adamw_first_step_is_sign_like():
    lr = 0.01
    cfg = _opt_cfg(name="adamw", weight_decay=0.0, grad_clip_norm=0.0)
    tx = make_optimizer(cfg, lambda step: lr)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Bias-corrected Adam's first update is -lr * g / (|g| + eps) = -lr for every element.
    for leaf in jax.tree.leaves(updates):
        np.testing.assert_allclose(leaf, -lr, rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adamw", "adafactor"])
def test_schedule_drives_the_optimizer(name):
    cfg = _opt_cfg(name=name, learning_rate=1.0, warmup_steps=4, weight_decay=0.0, momentum=0.0,
                   grad_clip_norm=0.0)
    schedule = learning_rate_schedule(cfg, 10)
    tx = make_optimizer(cfg, schedule)
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)  # step 0 of warmup: learning rate 0
    assert all(not leaf.any() for leaf in jax.tree.leaves(updates))
    updates, state = tx.update(grads, state, params)  # step 1: learning rate 0.25
    assert all(leaf.all() and (leaf < 0).all() for leaf in jax.tree.leaves(updates))
    if name == "sgd":
        np.testing.assert_allclose(updates["dense"]["kernel"], -0.25, rtol=1e-6)


@pytest.mark.parametrize("scale,clipped", [(10.0, True), (0.01, False)])
def test_clipping_caps_global_norm(scale, clipped):
    cfg = _opt_cfg(name="sgd", momentum=0.0, grad_clip_norm=1.0)
    tx = make_optimizer(cfg, lambda step: 1.0)
    params = _params()
    grads = jax.tree.map(lambda p: scale * jnp.asarray(np.random.default_rng(p.size).normal(size=p.shape),
                                                       jnp.float32), params)
    norm = math.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
    assert (norm > 1.0) == clipped
    updates, _ = tx.update(grads, tx.init(params), params)
    factor = 1.0 / norm if clipped else 1.0
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(u, -g * factor, rtol=1e-5)  # direction kept, length capped at 1
    out_norm = math.sqrt(sum(float(jnp.sum(u**2)) for u in jax.tree.leaves(updates)))
    assert out_norm == pytest.approx(min(norm, 1.0), rel=1e-5)


def test_no_clipping_when_disabled():
    tx = make_optimizer(_opt_cfg(name="sgd", momentum=0.0, grad_clip_norm=0.0), lambda step: 1.0)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for u in jax.tree.leaves(updates):
        np.testing.assert_allclose(u, -100.0)


# ---- gradient accumulation ---------------------------------------------------------------------------

VOCAB = 64
ENC_LEN, DEC_LEN = 8, 6
# Unoptimised XLA roughly halves compile time, which dominates these tiny-model tests on CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _random_params(model: EncoderDecoder) -> dict:
    tokens = jnp.ones((1, 4), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"]
    rng = np.random.default_rng(0)

    def fill(leaf):
        return jnp.asarray(rng.normal(size=leaf.shape) * 0.3, leaf.dtype)

    return jax.tree.map(fill, nn.unbox(boxed))


def _padded_batch() -> dict[str, np.ndarray]:
    """4 rows, one example each; rows 0, 2 (microbatch 0 of 2) hold many more target tokens than rows 1, 3."""
    rng = np.random.default_rng(1)
    enc_real, dec_real = [8, 3, 6, 2], [6, 1, 5, 2]
    batch = {k: np.zeros((4, ENC_LEN if k.startswith("encoder") else DEC_LEN), np.int32) for k in BATCH_KEYS}
    for row, (n_enc, n_dec) in enumerate(zip(enc_real, dec_real, strict=True)):
        for key, n in (("encoder_input_tokens", n_enc), ("decoder_target_tokens", n_dec)):
            prefix = key.split("_")[0]
            batch[key][row, :n] = rng.integers(3, VOCAB, size=n)
            batch[key][row, n - 1] = 1  # EOS
            batch[f"{prefix}_segment_ids"][row, :n] = 1
            batch[f"{prefix}_positions"][row, :n] = np.arange(n)
    return batch


@pytest.fixture(scope="module")
def accumulation_setup():
    model = EncoderDecoder(ModelConfig(vocab_size=VOCAB, **PRESETS["tiny"], dropout_rate=0.0))
    params = _random_params(model)
    tx = optax.sgd(0.5)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0, impl="rbg")))
    batch = {k: jnp.asarray(v) for k, v in _padded_batch().items()}
    results = {}
    for accum in (1, 2):
        step = functools.partial(train_step, model=model, tx=tx, schedule=optax.constant_schedule(0.5),
                                 label_smoothing=0.1, z_loss=1e-3, grad_accum_steps=accum, rng_impl="rbg")
        step = jax.jit(step, compiler_options=FAST_COMPILE)
        results[accum] = step(state, batch)
    return model, state, batch, results


def test_grad_accumulation_matches_full_batch(accumulation_setup):
    _, state, _, results = accumulation_setup
    (full, m1), (accum, m2) = results[1], results[2]
    assert int(full.step) == int(accum.step) == 1
    deltas = []
    for p0, p1, p2 in zip(jax.tree.leaves(state.params), jax.tree.leaves(full.params),
                          jax.tree.leaves(accum.params), strict=True):
        np.testing.assert_allclose(p2, p1, rtol=1e-5, atol=1e-6)
        # The updates themselves (not only params dominated by their old values) agree.
        np.testing.assert_allclose(p2 - p0, p1 - p0, rtol=1e-3, atol=1e-6)
        deltas.append(float(jnp.abs(p1 - p0).max()))
    assert max(deltas) > 1e-3  # the step moved the parameters, so the comparison means something
    for key in ("loss", "z_loss", "token_accuracy", "grad_norm", "tokens"):
        np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, err_msg=key)
    assert float(m1["tokens"]) == 8 + 3 + 6 + 2 + 6 + 1 + 5 + 2
    assert float(m1["learning_rate"]) == pytest.approx(0.5)


def test_train_step_loss_is_token_weighted_mean(accumulation_setup):
    model, state, batch, results = accumulation_setup
    logits = jax.jit(functools.partial(teacher_forced_logits, model), compiler_options=FAST_COMPILE)(
        state.params, batch)
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(batch["decoder_target_tokens"])
    weights = np.asarray(batch["decoder_segment_ids"] > 0, np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    labels = 0.9 * np.eye(VOCAB)[targets] + 0.1 / VOCAB
    ce = -(labels * (logits - lse[..., None])).sum(-1)
    z = 1e-3 * lse**2
    ref_loss = ((ce + z) * weights).sum() / weights.sum()
    # A mean of the two microbatches' means would weight rows 1, 3 (3 tokens) like rows 0, 2 (11 tokens).
    per_micro = [((ce + z) * weights)[k::2].sum() / weights[k::2].sum() for k in range(2)]
    assert abs(np.mean(per_micro) - ref_loss) > 1e-3
    for accum in (1, 2):
        metrics = results[accum][1]
        assert float(metrics["loss"]) == pytest.approx(ref_loss, rel=1e-5)
        assert float(metrics["z_loss"]) == pytest.approx((z * weights).sum() / weights.sum(), rel=1e-5)
    sums = jax.jit(functools.partial(eval_step, model=model), compiler_options=FAST_COMPILE)(
        state.params, batch)
    assert float(sums["weight_sum"]) == weights.sum() == 14
    # Evaluation: plain cross-entropy, no smoothing, no z-loss.
    target_log_p = np.take_along_axis(logits - lse[..., None], targets[..., None], -1)[..., 0]
    assert float(sums["loss_sum"]) == pytest.approx(-(target_log_p * weights).sum(), rel=1e-5)
