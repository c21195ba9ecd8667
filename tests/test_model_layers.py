"""Layers: relative position buckets (hand-computed from T5's definition), norm, MLP, decoder inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.model import ModelConfig, shift_right, shift_right_packed
from sora_jax.model.layers import MLP, RelativePositionBias, RMSNorm, relative_position_bucket

# relative_position = key_position - query_position.
# Bidirectional, 32 buckets, max_distance 128: 16 buckets per direction, exact below max_exact = 8, keys after
# the query offset by 16; larger distances n -> 8 + floor(log(n / 8) / log(128 / 8) * 8), capped at 15:
#   n=20: log(2.5)/log(16)*8 = 2.64 -> 10;  n=127: 7.977 -> 15;  n=128: 8.0 -> 16 -> capped 15.
BIDIRECTIONAL_32_128 = [
    (0, 0), (-3, 3), (3, 19), (-7, 7), (-8, 8), (8, 24), (-20, 10), (20, 26),
    (-127, 15), (-128, 15), (-1000, 15), (1000, 31),
]
# Causal, 32 buckets, max_distance 128: keys after the query -> 0; exact below 16; larger distances
# n -> 16 + floor(log(n / 16) / log(128 / 16) * 16), capped at 31:
#   n=40: log(2.5)/log(8)*16 = 7.05 -> 23;  n=127: 15.94 -> 31;  n=500 -> capped 31.
CAUSAL_32_128 = [
    (5, 0), (1, 0), (0, 0), (-5, 5), (-15, 15), (-16, 16), (-40, 23), (-127, 31), (-128, 31), (-500, 31),
]
# Bidirectional, 8 buckets, max_distance 16: 4 per direction, exact below max_exact = 2, larger distances
# n -> 2 + floor(log(n / 2) / log(16 / 2) * 2), capped at 3: n=4: 0.67 -> 2;  n=8: 1.33 -> 3;  n=100 -> 3.
BIDIRECTIONAL_8_16 = [(-1, 1), (1, 5), (-3, 2), (3, 6), (-4, 2), (-8, 3), (8, 7), (-100, 3), (100, 7)]


@pytest.mark.parametrize(
    "table, bidirectional, num_buckets, max_distance",
    [
        (BIDIRECTIONAL_32_128, True, 32, 128),
        (CAUSAL_32_128, False, 32, 128),
        (BIDIRECTIONAL_8_16, True, 8, 16),
    ],
)
def test_relative_position_bucket_matches_hand_values(table, bidirectional, num_buckets, max_distance):
    rel = jnp.array([r for r, _ in table])
    expected = [b for _, b in table]
    got = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    assert got.dtype == jnp.int32
    assert got.tolist() == expected


def _tiny(**overrides):
    return ModelConfig.from_preset("tiny", vocab_size=64, **overrides)


def test_relative_position_bias_decode_offset_matches_full_row():
    cfg = _tiny()
    module = RelativePositionBias(cfg, bidirectional=False)
    pos = jnp.arange(7)[None]
    params = module.init(jax.random.key(0), pos, pos)
    full_1HLL = module.apply(params, pos, pos)
    assert full_1HLL.shape == (1, cfg.num_heads, 7, 7)
    # A decode step at query position 4 over all 7 key slots is row 4 of the full matrix.
    step_1H1L = module.apply(params, jnp.array([[4]]), pos)
    np.testing.assert_array_equal(step_1H1L[:, :, 0], full_1HLL[:, :, 4])
    # Causal: all keys after the query share bucket 0, so their bias is identical.
    np.testing.assert_array_equal(full_1HLL[0, :, 2, 3], full_1HLL[0, :, 2, 6])


def test_rms_norm_scales_by_root_mean_square_without_centering():
    cfg = _tiny()
    x = jnp.array([[[3.0, 4.0] * 16]])  # rms = sqrt(12.5)
    norm = RMSNorm(cfg)
    params = norm.init(jax.random.key(0), x)
    y = norm.apply(params, x)
    np.testing.assert_allclose(y, x / np.sqrt(12.5 + cfg.layer_norm_epsilon), rtol=1e-6)
    assert jax.tree.map(jnp.shape, nn.unbox(params)) == {"params": {"scale": (32,)}}  # no bias


def test_rms_norm_bfloat16_output_dtype():
    cfg = _tiny(dtype="bfloat16")
    x = jnp.ones((1, 2, 32), jnp.bfloat16) * 3
    norm = RMSNorm(cfg)
    y = norm.apply(norm.init(jax.random.key(0), x), x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), 1.0, atol=1e-2)


@pytest.mark.parametrize("proj, names", [("gated-gelu", {"wi_0", "wi_1", "wo"}), ("relu", {"wi", "wo"})])
def test_mlp_variants(proj, names):
    cfg = _tiny(feed_forward_proj=proj)
    mlp = MLP(cfg)
    x = jax.random.normal(jax.random.key(1), (2, 3, 32))
    params = mlp.init(jax.random.key(0), x, deterministic=True)["params"]
    assert set(params) == names
    p = {k: v["kernel"] for k, v in nn.unbox(params).items()}
    y = mlp.apply({"params": params}, x, deterministic=True)
    if proj == "relu":
        expected = jnp.maximum(x @ p["wi"], 0) @ p["wo"]
    else:
        gate = x @ p["wi_0"]
        gelu_tanh = 0.5 * gate * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
        expected = (gelu_tanh * (x @ p["wi_1"])) @ p["wo"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_shift_right():
    targets = jnp.array([[7, 8, 9, 1, 0]])
    assert shift_right(targets, 0).tolist() == [[0, 7, 8, 9, 1]]
    assert shift_right(targets, 5).tolist() == [[5, 7, 8, 9, 1]]


def test_shift_right_packed_restarts_each_segment():
    targets = jnp.array([[7, 8, 1, 4, 5, 6, 1, 0, 0]])
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
    got = shift_right_packed(targets, segments, decoder_start_id=3)
    assert got.tolist() == [[3, 7, 8, 3, 4, 5, 6, 0, 0]]
