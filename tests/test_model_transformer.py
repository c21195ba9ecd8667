"""EncoderDecoder forward pass: masking, packing, scanning, heads, logical axes, dtypes."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from sora_jax.model import PRESETS, EncoderDecoder, ModelConfig, shift_right, shift_right_packed

VOCAB = 40
# Unoptimised XLA halves compile time, which dominates these tiny-model tests on CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets", "layers"}


def make_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**PRESETS["tiny"], "vocab_size": VOCAB, **overrides})


def random_params(model: EncoderDecoder, seed: int = 0) -> dict:
    """Parameters from numpy: a compiled `model.init` costs seconds per config on CPU, this costs nothing."""
    enc = jnp.ones((1, 4), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), enc, enc)["params"])
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        std = {"embedding": 1.0 if path[-2].key == "shared" else 0.5}.get(name, 0.2)
        return jnp.asarray(rng.normal(size=leaf.shape) * std, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def model_and_params(**overrides):
    model = EncoderDecoder(make_config(**overrides))
    return model, random_params(model)


@functools.cache
def jitted_forward(model):
    return jax.jit(lambda p, enc, dec, **kw: model.apply({"params": p}, enc, dec, **kw),
                   compiler_options=FAST_COMPILE)


def forward(model, params, enc, dec, **kw):
    return jitted_forward(model)(params, jnp.asarray(enc), jnp.asarray(dec), **kw)


def test_init_and_forward_shapes_and_float32_logits():
    model = EncoderDecoder(make_config())
    # The second row is all padding: its fully masked attention rows must not produce NaNs.
    enc, dec = jnp.array([[5, 6, 7, 0], [0, 0, 0, 0]]), jnp.array([[0, 3, 4], [0, 0, 0]])
    variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(0), enc, dec)
    assert set(variables) == {"params"}
    params = nn.unbox(variables["params"])
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, model_and_params()[1])
    logits = forward(model, params, enc, dec)
    assert logits.shape == (2, 3, VOCAB) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_encoder_padding_is_invisible():
    model, params = model_and_params()
    dec = [[0, 9, 10, 11]]
    unpadded = forward(model, params, [[5, 6, 7, 8]], dec)
    padded = forward(model, params, [[5, 6, 7, 8, 0, 0, 0]], dec)
    np.testing.assert_allclose(padded, unpadded, atol=1e-5)


def test_tokens_in_segment_zero_are_invisible():
    # With segment ids, id 0 marks padding: whatever token sits there must not leak into real positions.
    model, params = model_and_params()
    seg = jnp.array([[1, 1, 1, 1, 0, 0]])
    dec, dec_seg = jnp.array([[0, 9, 10, 11]]), jnp.array([[1, 1, 1, 1]])
    kw = dict(encoder_segment_ids=seg, decoder_segment_ids=dec_seg)
    a = forward(model, params, [[5, 6, 7, 8, 0, 0]], dec, **kw)
    b = forward(model, params, [[5, 6, 7, 8, 13, 21]], dec, **kw)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # Control: without segment ids the same edit is visible (those ids are not pad).
    c = forward(model, params, [[5, 6, 7, 8, 13, 21]], dec)
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


def test_decoder_is_causal():
    model, params = model_and_params()
    enc = [[5, 6, 7, 8]]
    a = forward(model, params, enc, [[0, 9, 10, 11, 12, 13]])
    b = forward(model, params, enc, [[0, 9, 10, 30, 12, 13]])
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert np.abs(np.asarray(a[:, 3:]) - np.asarray(b[:, 3:])).max() > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_packed_row_matches_separate_examples(scan):
    model, params = model_and_params(scan_layers=scan)
    enc_a, tgt_a = [5, 6, 7, 8, 9], [11, 12, 1]
    enc_b, tgt_b = [21, 22, 23], [31, 32, 33, 34, 1]
    # Lengths beyond the tiny preset's relative max_distance (16) would also be fine; these exercise the
    # log-spaced buckets (exact only below 2 / 4).
    enc = jnp.array([enc_a + enc_b + [0, 0]])
    enc_seg = jnp.array([[1] * 5 + [2] * 3 + [0, 0]])
    enc_pos = jnp.array([list(range(5)) + list(range(3)) + [0, 0]])
    tgt = jnp.array([tgt_a + tgt_b + [0]])
    dec_seg = jnp.array([[1] * 3 + [2] * 5 + [0]])
    dec_pos = jnp.array([list(range(3)) + list(range(5)) + [0]])
    dec = shift_right_packed(tgt, dec_seg, model.config.decoder_start_id)
    packed = forward(model, params, enc, dec, encoder_segment_ids=enc_seg, decoder_segment_ids=dec_seg,
                     encoder_positions=enc_pos, decoder_positions=dec_pos)
    # Both examples alone, as one right-padded batch (padding is masked, so it cannot matter).
    alone = forward(
        model, params, [enc_a + [0] * 5, enc_b + [0] * 7],
        shift_right(jnp.array([tgt_a + [0] * 6, tgt_b + [0] * 4]), model.config.decoder_start_id),
    )
    np.testing.assert_allclose(packed[0, :3], alone[0, :3], atol=2e-5)
    np.testing.assert_allclose(packed[0, 3:8], alone[1, :5], atol=2e-5)
    # Control: the same row without segment ids mixes the examples.
    unmasked = forward(model, params, enc, dec)
    assert np.abs(np.asarray(unmasked[0, 3:8]) - np.asarray(alone[1, :5])).max() > 1e-3


def _restack(unscanned: dict, num_layers: int) -> dict:
    """Turns layers_0..layers_{n-1} subtrees into one `layers` subtree with a leading layer axis."""
    out = {k: v for k, v in unscanned.items() if not re.fullmatch(r"layers_\d+", k)}
    layers = [unscanned[f"layers_{i}"] for i in range(num_layers)]
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def test_scan_and_unrolled_give_same_logits_for_restacked_params():
    model, params = model_and_params(scan_layers=False)
    scanned_model, scanned_params = model_and_params(scan_layers=True)
    restacked = dict(params)
    restacked["encoder"] = _restack(params["encoder"], model.config.num_encoder_layers)
    restacked["decoder"] = _restack(params["decoder"], model.config.num_decoder_layers)
    assert jax.tree.map(jnp.shape, restacked) == jax.tree.map(jnp.shape, scanned_params)
    enc, dec = [[5, 6, 7, 8, 0]], [[0, 9, 10, 11]]
    np.testing.assert_allclose(
        forward(scanned_model, restacked, enc, dec), forward(model, params, enc, dec), atol=1e-5
    )


def test_scan_traces_one_layer_body_regardless_of_depth():
    def num_eqns(scan, layers):
        model = EncoderDecoder(make_config(scan_layers=scan, num_encoder_layers=layers,
                                           num_decoder_layers=layers))
        enc = jnp.ones((1, 4), jnp.int32)
        variables = jax.eval_shape(model.init, jax.random.key(0), enc, enc)
        return len(jax.make_jaxpr(model.apply)(variables, enc, enc).eqns)

    assert num_eqns(True, 2) == num_eqns(True, 6)
    assert num_eqns(False, 2) < num_eqns(False, 6)  # control: unrolled grows


@pytest.mark.parametrize("tied", [False, True])
def test_tied_and_untied_heads(tied):
    model, params = model_and_params(tie_word_embeddings=tied)
    assert params["shared"]["embedding"].shape == (VOCAB, 32)
    if tied:
        assert "logits_dense" not in params["decoder"]
    else:
        assert params["decoder"]["logits_dense"]["kernel"].shape == (32, VOCAB)
    # The head really is the one used: scaling it scales the logits' spread.
    enc, dec = [[5, 6, 7]], [[0, 9]]
    base = forward(model, params, enc, dec)
    if tied:
        changed = jax.tree.map(lambda x: x, params)
        changed["shared"]["embedding"] = params["shared"]["embedding"] * 2
        assert np.abs(np.asarray(forward(model, changed, enc, dec)) - np.asarray(base)).max() > 1e-3
    else:
        changed = jax.tree.map(lambda x: x, params)
        changed["decoder"]["logits_dense"]["kernel"] = params["decoder"]["logits_dense"]["kernel"] * 2
        np.testing.assert_allclose(forward(model, changed, enc, dec), 2 * base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("proj, names", [("gated-gelu", {"wi_0", "wi_1", "wo"}), ("relu", {"wi", "wo"})])
def test_feed_forward_variant_param_names(proj, names):
    model, params = model_and_params(feed_forward_proj=proj)
    assert set(params["encoder"]["layers_0"]["mlp"]) == names
    assert set(params["decoder"]["layers_1"]["mlp"]) == names
    assert forward(model, params, [[5, 6]], [[0, 3]]).shape == (1, 2, VOCAB)


def test_layer_param_names_map_onto_hf_t5():
    _, params = model_and_params()
    assert set(params) == {"shared", "encoder", "decoder"}
    assert set(params["encoder"]) == {"relpos_bias", "layers_0", "layers_1", "final_norm"}
    assert set(params["encoder"]["layers_0"]) == {"self_attention_norm", "self_attention", "mlp_norm", "mlp"}
    assert set(params["decoder"]["layers_0"]) == {
        "self_attention_norm", "self_attention", "cross_attention_norm", "cross_attention", "mlp_norm", "mlp",
    }
    attn = params["decoder"]["layers_0"]["cross_attention"]
    assert {k: v["kernel"].shape for k, v in attn.items()} == {
        "q": (32, 2, 16), "k": (32, 2, 16), "v": (32, 2, 16), "o": (2, 16, 32),
    }
    assert params["decoder"]["relpos_bias"]["embedding"].shape == (8, 2)


@pytest.mark.parametrize("scan, tied", [(False, False), (True, True), (True, False)])
def test_every_param_has_logical_axes_of_its_rank(scan, tied):
    model = EncoderDecoder(make_config(scan_layers=scan, tie_word_embeddings=tied))
    enc = jnp.ones((2, 5), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), enc, enc)["params"]
    specs = nn.get_partition_spec(boxed)
    shapes = nn.unbox(boxed)
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    flat_specs = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
    flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
    assert len(flat_specs) == len(flat_shapes) > 0
    for path, spec in flat_specs:
        assert isinstance(spec, PartitionSpec), path
        assert len(spec) == len(flat_shapes[path].shape), (path, spec)
        assert set(spec) <= LOGICAL_AXES, (path, spec)
        assert ("layers" in spec) == (scan and any("layers" == getattr(k, "key", None) for k in path)), path


def test_init_and_apply_under_a_mesh_with_logical_rules():
    # Under an active mesh, logical names become sharding constraints; a parameter whose initializer sees a
    # different rank than its names (e.g. a flattened kernel) fails here and nowhere else.
    from jax.sharding import Mesh

    rules = [("batch", "data"), ("length", None), ("embed", None), ("heads", "model"), ("kv", None),
             ("mlp", "model"), ("vocab", "model"), ("relpos_buckets", None), ("layers", None)]
    model = EncoderDecoder(make_config(scan_layers=True))
    enc = jnp.ones((2, 4), jnp.int32)
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(0), enc, enc)
        logits = jax.jit(model.apply, compiler_options=FAST_COMPILE)(variables, enc, enc)
    assert logits.shape == (2, 4, VOCAB)
    kernel = variables["params"]["decoder"]["layers"]["self_attention"]["q"]["kernel"]
    assert kernel.names == ("layers", "embed", "heads", "kv")


def test_bfloat16_compute_is_close_to_float32():
    model32, params = model_and_params()
    model16 = EncoderDecoder(make_config(dtype="bfloat16"))
    enc, dec = [[5, 6, 7, 8, 0]], [[0, 9, 10, 11]]
    ref = forward(model32, params, enc, dec)
    got = forward(model16, params, enc, dec)
    assert got.dtype == jnp.float32
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(got - ref).max()) < 0.05 * scale + 0.05


def test_dropout_is_active_only_when_enabled_and_seeded():
    model, params = model_and_params(dropout_rate=0.3)
    enc, dec = jnp.array([[5, 6, 7, 8]]), jnp.array([[0, 9, 10]])

    @functools.partial(jax.jit, static_argnums=1, compiler_options=FAST_COMPILE)
    def run(seed, enable):
        return model.apply({"params": params}, enc, dec, enable_dropout=enable,
                           rngs={"dropout": jax.random.key(seed)})

    np.testing.assert_array_equal(run(0, False), run(1, False))
    np.testing.assert_array_equal(run(0, True), run(0, True))
    assert np.abs(np.asarray(run(0, True)) - np.asarray(run(1, True))).max() > 1e-3


def test_remat_under_scan_gives_same_gradients_with_dropout():
    # Rematerialisation must replay the same dropout masks, so gradients match the non-remat run exactly.
    enc, dec = jnp.array([[5, 6, 7, 8]]), jnp.array([[0, 9, 10]])
    grads = []
    for policy in ("none", "dots_with_no_batch_dims_saveable"):
        model, params = model_and_params(scan_layers=True, remat_policy=policy, dropout_rate=0.1)

        def loss(p, model=model):
            logits = model.apply({"params": p}, enc, dec, enable_dropout=True,
                                 rngs={"dropout": jax.random.key(3)})
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        grads.append(jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)(params))
    leaves = [jax.tree.leaves(g) for g in grads]
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves[0])
    assert any(float(jnp.abs(x).max()) > 0 for x in leaves[0])
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
