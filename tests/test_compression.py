"""Compression with qwix: int8/int4 PTQ (storage, accuracy, decoding, save/restore), QAT, LoRA and QLoRA."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from model_params import random_params
from test_decoding import penalised_scores, reference_greedy, to_scanned

from sora_jax import compression
from sora_jax.compression import providers
from sora_jax.decoding.search import DecodeOptions, beam_search, decode
from sora_jax.errors import SoraError
from sora_jax.model import PRESETS, EncoderDecoder, ModelConfig, shift_right
from sora_jax.model.loss import loss_sums, teacher_forced_logits
from sora_jax.model.params import tree_bytes
from sora_jax.training.state import TrainState
from sora_jax.training.step import train_step

# XLA optimisation level 0 keeps the compilations (the bulk of these tests' time) short on CPU.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
VOCAB, LENGTH = 64, 8
ENC = jnp.array([[5, 6, 7, 8, 9, 10, 0, 0], [11, 12, 13, 0, 0, 0, 0, 0],
                 [3, 4, 5, 6, 7, 8, 9, 10], [20, 21, 0, 0, 0, 0, 0, 0]])
MAX_LEN = 10


@functools.cache
def make_model(scan: bool = False) -> EncoderDecoder:
    """The tiny preset with one layer per stack: compilation time grows with the unrolled layers."""
    sizes = {**PRESETS["tiny"], "num_encoder_layers": 1, "num_decoder_layers": 1}
    return EncoderDecoder(ModelConfig(vocab_size=VOCAB, scan_layers=scan, **sizes))


def reverse_batch(seed: int, rows: int = 32) -> dict:
    """Reverse-the-input pairs: targets are the input tokens backwards, then EOS (1)."""
    x = np.random.default_rng(seed).integers(2, VOCAB, size=(rows, LENGTH)).astype(np.int32)
    y = np.concatenate([x[:, ::-1], np.ones((rows, 1), np.int32)], axis=1)
    return {
        "encoder_input_tokens": x, "decoder_target_tokens": y,
        "encoder_segment_ids": np.ones_like(x), "decoder_segment_ids": np.ones_like(y),
        "encoder_positions": np.broadcast_to(np.arange(x.shape[1], dtype=np.int32), x.shape),
        "decoder_positions": np.broadcast_to(np.arange(y.shape[1], dtype=np.int32), y.shape),
    }


@functools.cache
def step_fn(model: EncoderDecoder, tx: optax.GradientTransformation):
    return jit(functools.partial(train_step, model=model, tx=tx, schedule=optax.constant_schedule(0.0),
                                 label_smoothing=0.0, z_loss=0.0, grad_accum_steps=1, rng_impl="threefry2x32"))


def run_steps(model, tx, params, batches) -> tuple[TrainState, list[float]]:
    """Sora's own train step with `model` and `tx`; returns the final state and the loss of each step."""
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    losses = []
    for batch in batches:
        state, metrics = step_fn(model, tx)(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


@functools.cache
def qat_run() -> tuple[dict, dict, list[float]]:
    """(init params, params after 30 int8-QAT train steps on the reverse task, the loss of each step).

    The trained params also serve the PTQ and LoRA tests as a small model with trained-ish weights (one run
    instead of a float one and a QAT one: every train step costs a compilation).
    """
    tokens = jnp.zeros((1, LENGTH), jnp.int32)
    init = nn.unbox(jit(make_model().init)(jax.random.key(0), tokens, tokens)["params"])
    qat = compression.qat_model(make_model(), "int8")
    state, losses = run_steps(qat, optax.adam(3e-3), init, [reverse_batch(i) for i in range(30)])
    return init, state.params, losses


def trained_params() -> dict:
    return qat_run()[1]


@functools.cache
def forward(model):
    return jit(lambda params, enc, dec: model.apply({"params": params}, enc, dec))


def model_inputs(batch: dict) -> tuple[jax.Array, jax.Array]:
    """(encoder tokens, decoder inputs) of a batch for a plain forward pass."""
    enc = jnp.asarray(batch["encoder_input_tokens"])
    return enc, shift_right(jnp.asarray(batch["decoder_target_tokens"]), 0)


def eval_inputs():
    return model_inputs(reverse_batch(1000))


def mean_loss(logits, batch) -> float:
    targets = batch["decoder_target_tokens"]
    return float(loss_sums(logits, targets, jnp.ones(targets.shape))["loss_sum"]) / targets.size


# --- PTQ ------------------------------------------------------------------------------------------------------

@functools.cache
def quantized(scheme: str):
    return compression.quantize_model(make_model(), trained_params(), scheme)


@pytest.mark.parametrize("scheme, dtype, bits", [("int8", jnp.int8, 8), ("int4", jnp.int4, 4)])
def test_quantized_params_store_int_kernels_and_keep_the_rest(scheme, dtype, bits):
    params = trained_params()
    _, qparams = quantized(scheme)
    floats, quants = providers.flat(params), providers.flat(qparams)
    assert set(floats) == set(quants)
    kernel_bits, scale_count, other_bytes, kernels = 0, 0, 0, 0
    for path, leaf in quants.items():
        if path[-2] in compression.QUANTIZED_LAYERS:
            kernels += 1
            qarray = leaf.array
            assert qarray.qvalue.dtype == dtype and qarray.scale.dtype == jnp.float32
            assert qarray.qvalue.shape == floats[path].shape
            # One scale per output channel: size 1 on the contracted (leading) dims, full on the others.
            assert qarray.scale.shape[0] == 1 and qarray.scale.shape[-1] == qarray.qvalue.shape[-1]
            kernel_bits += qarray.qvalue.size * bits
            scale_count += qarray.scale.size
        else:  # embedding, position bias, norm scales: float and untouched
            np.testing.assert_array_equal(leaf, floats[path])
            assert leaf.dtype == jnp.float32
            other_bytes += leaf.size * 4
    # The encoder layer's 7 kernels (q, k, v, o, wi_0, wi_1, wo), the decoder layer's 11, the LM head.
    assert kernels == 7 + 11 + 1
    assert tree_bytes(qparams) == kernel_bits // 8 + scale_count * 4 + other_bytes
    assert tree_bytes(params) == 4 * sum(x.size for x in jax.tree.leaves(params))


def test_quantized_logits_are_close_to_float():
    enc, dec = eval_inputs()
    float_logits = np.asarray(forward(make_model())(trained_params(), enc, dec))
    errors = {}
    for scheme in ("int8", "int4"):
        qmodel, qparams = quantized(scheme)
        logits = np.asarray(forward(qmodel)(qparams, enc, dec))
        errors[scheme] = np.linalg.norm(logits - float_logits) / np.linalg.norm(float_logits)
        agree = np.mean(logits.argmax(-1) == float_logits.argmax(-1))
        errors[scheme + "_agree"] = agree
    # Measured: relative RMS error 0.0109 (int8), 0.195 (int4); argmax agreement 1.0 and 0.993.
    assert 1e-4 < errors["int8"] < 0.015 and errors["int8_agree"] >= 0.99, errors
    assert errors["int8"] * 5 < errors["int4"] < 0.25 and errors["int4_agree"] >= 0.95, errors


@functools.cache
def decode_fn(model, options):
    return jit(functools.partial(decode, options=options, model=model))


def test_decoding_the_quantized_model_with_its_cache_matches_uncached_references():
    # Random weights (as in test_decoding) give outputs of several lengths; the briefly trained model says EOS.
    qmodel, qparams = compression.quantize_model(make_model(), random_params(make_model()), "int8")
    greedy = np.asarray(decode_fn(qmodel, DecodeOptions(method="greedy", max_length=MAX_LEN))(qparams, ENC))
    np.testing.assert_array_equal(greedy, reference_greedy(qmodel, qparams, ENC, MAX_LEN))
    assert (greedy != 0).sum() > ENC.shape[0], greedy  # real tokens, not an all-EOS toy
    # (Sampling runs the same token loop as greedy with another choice of token, so greedy covers it.)
    tokens, scores = jit(functools.partial(beam_search, model=qmodel, max_length=MAX_LEN, beam_size=3))(qparams, ENC)
    for n in range(3):
        live = np.isfinite(scores[:, n])
        rescored = penalised_scores(qmodel, qparams, ENC, tokens[:, n])
        np.testing.assert_allclose(np.asarray(scores)[live, n], rescored[live], atol=1e-4)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_save_and_restore_quantized_params_round_trip_exactly(tmp_path, scheme):
    qmodel, qparams = quantized(scheme)
    compression.save_quantized_params(tmp_path / "q", qparams)
    restored = compression.restore_quantized_params(tmp_path / "q", compression.quantized_model(make_model(), scheme))
    assert jax.tree.structure(restored) == jax.tree.structure(qparams)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(qparams), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    other = "int4" if scheme == "int8" else "int8"
    with pytest.raises(SoraError, match="scheme"):
        compression.restore_quantized_params(tmp_path / "q", compression.quantized_model(make_model(), other))
    with pytest.raises(SoraError, match="already exists"):
        compression.save_quantized_params(tmp_path / "q", qparams)


def test_scanned_layers_quantize_like_unscanned_ones():
    qmodel, qparams = quantized("int8")
    scan_qmodel, scan_qparams = compression.quantize_model(make_model(scan=True), to_scanned(trained_params()), "int8")
    for got, want in zip(jax.tree.leaves(scan_qparams), jax.tree.leaves(to_scanned(qparams)), strict=True):
        np.testing.assert_array_equal(got, want)  # scales per channel of each layer, not across the layer axis
    enc, dec = eval_inputs()
    np.testing.assert_allclose(forward(scan_qmodel)(scan_qparams, enc, dec), forward(qmodel)(qparams, enc, dec),
                               atol=1e-5)


def test_quantize_model_rejects_bad_input():
    params = random_params(make_model())
    with pytest.raises(SoraError, match="int8, int4"):
        compression.quantize_model(make_model(), params, "fp8")
    with pytest.raises(SoraError, match="scan_layers"):
        compression.quantize_model(make_model(), to_scanned(params), "int8")
    _, qparams = compression.quantize_model(make_model(), params, "int8")
    with pytest.raises(SoraError, match="already quantized"):
        compression.quantize_model(make_model(), qparams, "int8")


# --- QAT ------------------------------------------------------------------------------------------------------

def test_qat_train_step_uses_int8_weights_and_lowers_the_loss():
    model, qat = make_model(), compression.qat_model(make_model(), "int8")
    init, params, losses = qat_run()
    first = reverse_batch(0)
    # The train step's first loss is the fake-quantized model's, not the float model's.
    assert losses[0] == pytest.approx(mean_loss(forward(qat)(init, *model_inputs(first)), first), abs=1e-5)
    assert abs(losses[0] - mean_loss(forward(model)(init, *model_inputs(first)), first)) > 1e-4
    # Rounding has zero gradient almost everywhere; only the straight-through estimator lets the loss fall.
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.4, losses
    assert jax.tree.structure(params) == jax.tree.structure(init)
    # Fake quantization computes what the stored int8 model computes after training.
    enc, dec = eval_inputs()
    qmodel, qparams = quantized("int8")
    qat_logits = np.asarray(forward(qat)(params, enc, dec))
    np.testing.assert_allclose(qat_logits, forward(qmodel)(qparams, enc, dec), atol=1e-5)
    assert np.abs(qat_logits - np.asarray(forward(model)(params, enc, dec))).max() > 1e-2


# --- LoRA / QLoRA ---------------------------------------------------------------------------------------------

def key(seed: int) -> jax.Array:
    # The adapters' random init compiles twice as fast with rbg keys as with threefry ones on CPU.
    return jax.random.key(seed, impl="rbg")


def from_scanned(params: dict) -> dict:
    """Inverse of to_scanned for one layer per stack."""
    out = {}
    for stack, sub in params.items():
        out[stack] = {k: v for k, v in sub.items() if k != "layers"}
        if "layers" in sub:
            out[stack]["layers_0"] = jax.tree.map(lambda x: x[0], sub["layers"])
    return out


def adapters_of(params) -> dict:
    return {p: x for p, x in providers.flat(params).items() if p[-1].endswith(("_lora_a", "_lora_b"))}


@functools.cache
def lora_trained():
    """LoRA (rank 4, alpha 8) on the trained model, then 8 steps of Sora's train step with `lora_optimizer`."""
    lmodel = compression.lora_model(make_model(), rank=4, alpha=8.0)
    params = compression.init_lora_params(lmodel, trained_params(), key(2))
    state, losses = run_steps(lmodel, compression.lora_optimizer(optax.adam(1e-2), params), params,
                              [reverse_batch(100)] * 8)
    return lmodel, params, state, losses


def test_lora_training_moves_only_adapters_and_keeps_optimizer_state_small():
    lmodel, params, state, losses = lora_trained()
    enc, dec = eval_inputs()
    # B starts at zero, so a fresh adapter changes nothing.
    np.testing.assert_allclose(forward(lmodel)(params, enc, dec), forward(make_model())(trained_params(), enc, dec),
                               atol=1e-6)
    assert losses[-1] < losses[0] - 0.05, losses
    after = providers.flat(state.params)
    for path, leaf in providers.flat(trained_params()).items():
        assert np.array_equal(np.asarray(after[path]), np.asarray(leaf)), path  # bitwise frozen
    moved = [p for p, x in adapters_of(state.params).items() if not np.array_equal(x, adapters_of(params)[p])]
    # A and B for q, k, v, o, wi_0, wi_1, wo in the encoder layer, and those plus cross-attention's 4 in the decoder's.
    assert len(moved) == len(adapters_of(params)) == 2 * (7 + 11)
    # Adam keeps two moments per trainable scalar plus its int32 step counter, nothing for the base.
    adapter_bytes = tree_bytes(adapters_of(params))
    lora_bytes = tree_bytes(state.opt_state)
    full_bytes = tree_bytes(optax.adam(1e-2).init(params))
    assert lora_bytes == 2 * adapter_bytes + 4
    assert lora_bytes < 0.3 * full_bytes, (lora_bytes, full_bytes)
    with_norms = compression.lora_optimizer(optax.adam(1e-2), params, train_norms=True).init(params)
    norm_bytes = tree_bytes({p: x for p, x in providers.flat(params).items() if p[-1] == "scale"})
    assert tree_bytes(with_norms) == 2 * (adapter_bytes + norm_bytes) + 4


def test_merged_params_give_the_trained_lora_models_logits():
    lmodel, _, state, _ = lora_trained()
    merged = compression.merge_lora(state.params, alpha=8.0)
    assert jax.tree.structure(merged) == jax.tree.structure(trained_params())
    enc, dec = eval_inputs()
    lora_logits = np.asarray(forward(lmodel)(state.params, enc, dec))
    # Measured: at most 3e-6 apart (float32 rounding of x @ (W + s A B) against x @ W + s (x @ A) @ B).
    np.testing.assert_allclose(forward(make_model())(merged, enc, dec), lora_logits, atol=2e-5, rtol=1e-5)
    assert np.abs(lora_logits - np.asarray(forward(make_model())(trained_params(), enc, dec))).max() > 1e-2


def test_merge_lora_with_scanned_layers():
    model = make_model(scan=True)
    lmodel = compression.lora_model(model, rank=3, alpha=6.0, targets=("q", "v", "o", "wi_0", "wo"))
    base = to_scanned(trained_params())
    # Random non-zero adapters of the shapes qwix creates (a leading layer axis), as after training.
    rng = np.random.default_rng(0)
    params = providers.flat(base)
    for path, spec in adapters_of(providers.abstract_params(lmodel)).items():
        assert spec.shape[0] == model.config.num_encoder_layers
        params[path] = jnp.asarray(rng.normal(size=spec.shape) * 0.1, jnp.float32)
    params = providers.unflat(params)
    merged = compression.merge_lora(params, alpha=6.0)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    enc, dec = eval_inputs()
    lora_logits = np.asarray(forward(lmodel)(params, enc, dec))
    # The unscanned model reads the same weights (and its forward is compiled already).
    np.testing.assert_allclose(forward(make_model())(from_scanned(merged), enc, dec), lora_logits, atol=2e-5,
                               rtol=1e-5)  # measured 1.1e-6 apart
    assert np.abs(lora_logits - np.asarray(forward(make_model())(trained_params(), enc, dec))).max() > 0.1


def test_qlora_trains_adapters_over_an_int8_base_and_merges_to_float():
    model, base = make_model(), trained_params()
    lmodel = compression.lora_model(model, rank=4, alpha=8.0, base_scheme="int8")
    params = compression.init_lora_params(lmodel, base, key(3))
    _, int8_base = quantized("int8")
    for path, leaf in providers.flat(int8_base).items():  # the base is the PTQ int8 model's
        for got, want in zip(jax.tree.leaves(providers.flat(params)[path]), jax.tree.leaves(leaf), strict=True):
            np.testing.assert_array_equal(got, want)
    trainable, frozen = compression.split_trainable(params)
    assert set(providers.flat(trainable)) == set(adapters_of(params))
    tx = optax.adam(1e-2)
    batch = reverse_batch(101)

    def loss_fn(trainable):
        sums = loss_sums(teacher_forced_logits(lmodel, compression.join_params(trainable, frozen), batch),
                         batch["decoder_target_tokens"], jnp.ones(batch["decoder_target_tokens"].shape))
        return sums["loss_sum"] / sums["weight_sum"]

    @jit
    def step(trainable, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    opt_state, losses = tx.init(trainable), []
    for _ in range(8):
        trainable, opt_state, loss = step(trainable, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05, losses
    params = compression.join_params(trainable, frozen)
    merged = compression.merge_lora(params, alpha=8.0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(merged))
    enc, dec = eval_inputs()
    # The int8 base dequantized into the merge computes what the int8 matmuls computed (measured 1.3e-6 apart).
    np.testing.assert_allclose(forward(model)(merged, enc, dec), forward(lmodel)(params, enc, dec), atol=2e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "rank"), (dict(rank=2.0), "rank"), (dict(rank=32), "smaller dimension"),
    (dict(alpha=0.0), "alpha"), (dict(targets=("logits_dense",)), "LM head"), (dict(targets=("qkv",)), "qkv"),
    (dict(targets=("wi",)), "no layer"), (dict(base_scheme="int2"), "int8, int4"),
])
def test_lora_model_rejects_bad_options(kwargs, match):
    # tiny: d_model 32, heads x d_kv 32, d_ff 64, so every layer's smaller dimension is 32; gated MLP has no wi.
    options = {"rank": 4, "alpha": 8.0, **kwargs}
    with pytest.raises(SoraError, match=match):
        compression.lora_model(make_model(), **options)
