"""Cached autoregressive decoding (decode=True) agrees with the teacher-forced forward pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_params import random_params

from sora_jax.model import PRESETS, EncoderDecoder, ModelConfig, shift_right

VOCAB = 40
FAST_COMPILE = {"xla_backend_optimization_level": 0}
ENC = jnp.array([[5, 6, 7, 8, 9, 0, 0], [11, 12, 13, 14, 15, 16, 17]])
DEC = jnp.array([[0, 21, 22, 23, 24, 25], [0, 31, 32, 33, 34, 35]])


@functools.cache
def setup(scan: bool):
    model = EncoderDecoder(ModelConfig(**{**PRESETS["tiny"], "vocab_size": VOCAB, "scan_layers": scan}))
    params = random_params(model)
    jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    encode = jit(lambda p, enc: model.apply({"params": p}, enc, method=model.encode))
    init_cache = jit(
        lambda p, encoded, enc, first: model.apply(
            {"params": p}, encoded, enc, first, decode=True, max_decode_length=DEC.shape[1],
            method=model.decode, mutable=["cache"],
        )[1]["cache"],
    )
    step = jit(
        lambda p, cache, encoded, enc, tokens: model.apply(
            {"params": p, "cache": cache}, encoded, enc, tokens, decode=True, method=model.decode,
            mutable=["cache"],
        )
    )
    full = jit(lambda p, enc, dec: model.apply({"params": p}, enc, dec))
    return model, params, encode, init_cache, step, full


def run_steps(step, params, cache, encoded, chunks):
    outputs = []
    for tokens in chunks:
        logits, mutated = step(params, cache, encoded, ENC, tokens)
        cache = mutated["cache"]
        outputs.append(logits)
    return jnp.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("scan", [False, True])
def test_cached_steps_equal_full_forward(scan):
    _, params, encode, init_cache, step, full = setup(scan)
    encoded = encode(params, ENC)
    cache = init_cache(params, encoded, ENC, DEC[:, :1])
    assert int(cache["decoder"]["cache_index"]) == 0
    stepped, cache = run_steps(step, params, cache, encoded, [DEC[:, i : i + 1] for i in range(DEC.shape[1])])
    assert int(cache["decoder"]["cache_index"]) == DEC.shape[1]
    np.testing.assert_allclose(stepped, full(params, ENC, DEC), atol=2e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_cache_arrays_are_batch_first(scan):
    _, params, encode, init_cache, _, _ = setup(scan)
    cache = init_cache(params, encode(params, ENC), ENC, DEC[:, :1])
    for path, leaf in jax.tree_util.tree_flatten_with_path(cache)[0]:
        if path[-1].key == "cache_index":
            assert leaf.shape == ()
        else:
            assert leaf.shape[0] == ENC.shape[0], path
            # Self-attention buffers span max_decode_length; cross-attention ones the encoder length.
            expected = DEC.shape[1] if "self_attention" in str(path) else ENC.shape[1]
            assert leaf.shape[-3] == expected, path


def test_prefix_chunk_then_single_steps():
    # Feeding several tokens in one cached call (a prompt) continues exactly like single steps.
    _, params, encode, init_cache, step, full = setup(False)
    encoded = encode(params, ENC)
    cache = init_cache(params, encoded, ENC, DEC[:, :1])
    chunks = [DEC[:, :3], DEC[:, 3:4], DEC[:, 4:5], DEC[:, 5:6]]
    stepped, _ = run_steps(step, params, cache, encoded, chunks)
    np.testing.assert_allclose(stepped, full(params, ENC, DEC), atol=2e-5)


def test_steps_reuse_cached_encoder_keys_and_values():
    # After the cache is built, neither the encoder output nor the cross-attention k/v kernels are used.
    _, params, encode, init_cache, step, _ = setup(False)
    encoded = encode(params, ENC)
    cache = init_cache(params, encoded, ENC, DEC[:, :1])
    chunks = [DEC[:, i : i + 1] for i in range(3)]
    reference, _ = run_steps(step, params, cache, encoded, chunks)
    broken = jax.tree.map(lambda x: x, params)
    for i in range(2):
        cross = broken["decoder"][f"layers_{i}"]["cross_attention"]
        cross["k"]["kernel"] = jnp.zeros_like(cross["k"]["kernel"])
        cross["v"]["kernel"] = jnp.zeros_like(cross["v"]["kernel"])
    got, _ = run_steps(step, broken, cache, jnp.zeros_like(encoded), chunks)
    np.testing.assert_array_equal(got, reference)


def test_greedy_loop_under_fori_loop_is_self_consistent():
    # Greedy tokens decoded with the cache inside one jitted loop are the argmax of the teacher-forced
    # forward pass over those same tokens.
    model, params, encode, init_cache, _, full = setup(True)
    length = DEC.shape[1]
    start = jnp.full((ENC.shape[0], 1), model.config.decoder_start_id, jnp.int32)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def greedy(p, encoded, cache):
        def body(i, carry):
            cache, token_B1, out_BL = carry
            logits, mutated = model.apply({"params": p, "cache": cache}, encoded, ENC, token_B1, decode=True,
                                          method=model.decode, mutable=["cache"])
            token_B1 = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return mutated["cache"], token_B1, jax.lax.dynamic_update_slice(out_BL, token_B1, (0, i))

        out = jnp.zeros((ENC.shape[0], length), jnp.int32)
        return jax.lax.fori_loop(0, length, body, (cache, start, out))[2]

    encoded = encode(params, ENC)
    tokens = greedy(params, encoded, init_cache(params, encoded, ENC, start))
    teacher = full(params, ENC, shift_right(tokens, model.config.decoder_start_id))
    np.testing.assert_array_equal(jnp.argmax(teacher, axis=-1), tokens)
