"""T5Gemma (ModelConfig.family="t5gemma"): Sora against golden outputs of transformers' T5GemmaForConditionalGeneration,
decoding with the KV cache, export round trips, `init_from=hf:` and bad checkpoints.

The fixtures in tests/fixtures/hf_t5gemma/ were written by tools/make_hf_t5gemma_fixtures.py (transformers 4.57 as
the oracle; the tool also loads Sora's exports back into transformers); these tests need neither torch nor
transformers.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import hf_fixtures
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from hf_fixtures import forward
from safetensors import safe_open

from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5
from sora_jax.interop.hf_t5 import checkpoint_tokenizer
from sora_jax.model import EncoderDecoder, ModelConfig, shift_right
from sora_jax.training import pretrained

FIXTURES = Path(__file__).parent / "fixtures" / "hf_t5gemma"
VARIANTS = ("gqa_window_softcap", "mha_untied")
expected = functools.partial(hf_fixtures.expected, FIXTURES)
imported = functools.partial(hf_fixtures.imported, FIXTURES)


def broken_copy(tmp_path: Path, variant: str = "gqa_window_softcap", **edits) -> Path:
    return hf_fixtures.broken_copy(FIXTURES, tmp_path, variant, **edits)


# ---------------------------------------------------------------- parity with transformers


def test_fixtures_cover_every_feature():
    a, _, _ = imported("gqa_window_softcap")
    b, _, _ = imported("mha_untied")
    assert a.stack("encoder").d_model != a.d_model and a.num_encoder_layers != a.num_decoder_layers
    assert a.stack("encoder").kv_heads < a.stack("encoder").num_heads and a.kv_heads == 1  # GQA and MQA
    assert a.attn_logit_softcapping and a.final_logit_softcapping and a.tie_word_embeddings
    assert a.query_pre_attn_scalar != a.d_kv and a.decoder_start_id == 2
    assert not b.attn_logit_softcapping and not b.tie_word_embeddings and b.kv_heads == b.num_heads
    for cfg in (a, b):  # sliding and global layers in both stacks, windows shorter than the inputs
        for stack in ("encoder", "decoder"):
            assert set(cfg.sliding_layers(stack)) == {True, False}
        assert cfg.sliding_window < expected("mha_untied")["input_ids"].shape[1]
    assert (FIXTURES / "gqa_window_softcap" / "model.safetensors.index.json").is_file()  # sharded


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant, scan):
    hf_fixtures.check_logits_match_transformers(FIXTURES, variant, scan)


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_tree_matches_model_init(variant):
    hf_fixtures.check_params_tree_matches_model_init(FIXTURES, variant)


# ---------------------------------------------------------------- decoding with the KV cache


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_decode_matches_generate(variant, scan):
    hf_fixtures.check_greedy_decode_matches_generate(FIXTURES, variant, scan)


def test_cached_steps_equal_the_full_forward_pass():
    cfg, params, _ = imported("gqa_window_softcap")
    ref = expected("gqa_window_softcap")
    enc = jnp.asarray(ref["input_ids"])
    targets = jnp.asarray(np.random.default_rng(0).integers(4, cfg.vocab_size, (3, 9)))
    decoder_inputs = shift_right(targets, cfg.decoder_start_id)
    full = forward(cfg)(params, enc, decoder_inputs)
    steps, cache = hf_fixtures.decode_step_by_step(cfg, params, enc, decoder_inputs)
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
    # A sliding layer keeps only its window (written round-robin), a global layer every step.
    lengths = hf_fixtures.self_cache_lengths(cfg, cache)
    assert lengths == {True: {cfg.sliding_window}, False: {decoder_inputs.shape[1]}}, lengths


def test_beam_search_and_sampling():
    cfg, params, _ = imported("gqa_window_softcap")
    hf_fixtures.check_beam_search_and_sampling(cfg, params, jnp.asarray(expected("gqa_window_softcap")["input_ids"]))


# ---------------------------------------------------------------- export round trips


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_round_trip(variant, scan, tmp_path):
    hf_fixtures.check_export_round_trip(tmp_path, *imported(variant, scan), scan)
    original = {}
    for file in (FIXTURES / variant).glob("*.safetensors"):
        with safe_open(file, framework="numpy") as f:
            original.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    with safe_open(tmp_path / "model.safetensors", framework="numpy") as f:
        exported = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert original.keys() == exported.keys()  # exactly the tensors transformers itself saves
    assert all(np.array_equal(original[k], exported[k]) for k in original)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "t5gemma" and written["architectures"] == ["T5GemmaForConditionalGeneration"]


# ---------------------------------------------------------------- init_from=hf: and training


def test_init_from_takes_architecture_and_gemma_tokenizer():
    config = config_lib.base_config()
    directory = FIXTURES / "gqa_window_softcap"
    config.init_from = f"hf:{directory}"
    pretrained.apply_pretrained_architecture(config)
    assert config.tokenizer.model_path == str(directory / "tokenizer.model") and config.tokenizer.extra_ids == 0
    resolved = config_lib.resolve_model_config(config.model, vocab_size := imported("gqa_window_softcap")[0].vocab_size)
    assert resolved == imported("gqa_window_softcap")[0] and resolved.vocab_size == vocab_size


def test_a_tiny_t5gemma_learns():
    # Scanned and rematerialised: the per-layer sliding flag is a scanned input here.
    cfg = ModelConfig.from_preset("t5gemma_tiny", vocab_size=64, d_model=32, d_ff=64, encoder_d_model=48,
                                  encoder_d_ff=96, d_kv=8, query_pre_attn_scalar=8.0, sliding_window=4,
                                  scan_layers=True, remat_policy="full")
    hf_fixtures.check_learns_to_copy(cfg)


# ---------------------------------------------------------------- bad input: one line, before any placement


@pytest.mark.parametrize("edits, match", [
    ({"model_type": "gemma2"}, r"model_type is 'gemma2'; Sora imports T5-family and T5Gemma"),
    ({"encoder__rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"encoder\.rope_scaling has type 'yarn'"),
    ({"decoder__layer_types": ["sliding_attention", "chunked_attention"]},
     r"decoder\.layer_types has 'chunked_attention'"),
    ({"decoder__hidden_activation": "relu"}, r"decoder\.hidden_activation is 'relu'"),
    ({"decoder__head_dim": 4}, r"decoder\.head_dim is 4 but encoder\.head_dim is 8"),
    ({"encoder__hidden_size": 28}, r"tensor model\.encoder\.embed_tokens\.weight has shape \[96, 24\] but .* implies "
                                   r"\[96, 28\]"),
    ({"encoder__num_hidden_layers": 2, "encoder__layer_types": ["sliding_attention", "full_attention"]},
     r"unexpected tensor model\.encoder\.layers\.2\."),
    ({"attention_dropout": 0.1}, r"attention_dropout is 0\.1"),
])
def test_bad_checkpoints_fail_with_one_line(tmp_path, no_device_put, edits, match):
    directory = broken_copy(tmp_path, **edits)
    with pytest.raises(SoraError, match=match) as error:
        load_hf_t5(directory)
    assert "\n" not in str(error.value)


def test_missing_tokenizer(tmp_path, no_device_put):
    cfg, _, tokenizer = imported("mha_untied")
    assert tokenizer is None  # the loader returns none; a run that needs one is refused
    with pytest.raises(SoraError, match=r"has no tokenizer\.model"):
        checkpoint_tokenizer(FIXTURES / "mha_untied", cfg)
    config = config_lib.base_config()
    config.init_from = f"hf:{FIXTURES / 'mha_untied'}"
    with pytest.raises(SoraError, match=r"has no tokenizer\.model"):
        pretrained.apply_pretrained_architecture(config)


@pytest.mark.parametrize("fields, match", [
    (dict(num_kv_heads=3), r"ModelConfig\.num_kv_heads \(3\) must divide the encoder's num_heads \(4\)"),
    (dict(decoder_layer_types=("full_attention",)), r"decoder_layer_types must be empty or a tuple of 2"),
    (dict(encoder_layer_types=("full_attention", "local")), r"encoder_layer_types has 'local'"),
    (dict(sliding_window=0), r"sliding_window is 0 but encoder_layer_types has sliding"),
    (dict(family="t5", num_kv_heads=2), r"num_kv_heads is set but family is \"t5\""),
])
def test_config_validation(fields, match):
    base = dict(vocab_size=64, encoder_layer_types=("sliding_attention", "full_attention"))
    with pytest.raises(SoraError, match=match):
        ModelConfig.from_preset("t5gemma_tiny", **{**base, **fields})


def test_flops_count_every_kernel_each_token_passes():
    from sora_jax.training.flops import train_step_flops

    cfg = ModelConfig.from_preset("t5gemma_tiny", vocab_size=64)  # wider encoder, grouped key/value heads
    tokens = jnp.ones((1, 4), jnp.int32)
    shapes = traverse_util.flatten_dict(nn.unbox(jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0),
                                                                tokens, tokens)["params"]))
    kernels = {path: int(np.prod(x.shape)) for path, x in shapes.items() if path[-1] == "kernel"}
    cross_kv = sum(n for p, n in kernels.items() if "cross_attention" in p and p[-2] in ("k", "v"))
    encoder = sum(n for p, n in kernels.items() if p[0] == "encoder")
    decoder = sum(n for p, n in kernels.items() if p[0] == "decoder" and p[1] != "logits_dense") - cross_kv
    flops = train_step_flops(cfg, batch_size=2, input_length=8, target_length=4)
    assert flops.encoder_weights == 2 * (2 * 8) * encoder
    assert flops.decoder_weights == 2 * (2 * 4) * decoder
    assert flops.cross_kv == 2 * (2 * 8) * cross_kv


@pytest.mark.parametrize("name, params", [("t5gemma_s_s", 312_517_632), ("t5gemma_b_b", 591_490_560)])
def test_presets_have_the_published_parameter_counts(name, params):
    cfg = ModelConfig.from_preset(name, scan_layers=True)  # counts published with KerasHub's T5Gemma presets
    tokens = jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), tokens, tokens)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes))) == params


def test_unbalanced_preset():
    cfg = ModelConfig.from_preset("t5gemma_9b_2b")
    enc = cfg.stack("encoder")
    assert (enc.d_model, enc.d_ff, enc.num_heads, enc.kv_heads, cfg.num_encoder_layers) == (3584, 14336, 16, 8, 42)
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.kv_heads, cfg.num_decoder_layers) == (2304, 9216, 8, 4, 26)
    assert cfg.sliding_layers("decoder")[:2] == (True, False) and cfg.decoder_start_id == 2
