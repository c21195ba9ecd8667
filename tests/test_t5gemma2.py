"""T5Gemma 2 (ModelConfig.family="t5gemma2", text only): Sora against golden outputs of transformers 5's
T5Gemma2ForConditionalGeneration, decoding with the KV cache (merged attention's two caches), export round trips,
`init_from=hf:` and bad checkpoints.

The fixtures in tests/fixtures/hf_t5gemma2/ were written by tools/make_hf_t5gemma2_fixtures.py (transformers 5.25 as
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
from hf_fixtures import flat, forward
from safetensors import safe_open
from safetensors.numpy import save_file

from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5
from sora_jax.interop.hf_t5gemma2_layout import VISION_PREFIXES
from sora_jax.model import EncoderDecoder, ModelConfig, shift_right
from sora_jax.training import pretrained
from sora_jax.training.flops import train_step_flops

FIXTURES = Path(__file__).parent / "fixtures" / "hf_t5gemma2"
VARIANTS = ("gqa_tied_eoi", "mha_untied")
expected = functools.partial(hf_fixtures.expected, FIXTURES)
imported = functools.partial(hf_fixtures.imported, FIXTURES)


def stored_tensors(directory: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for file in directory.glob("*.safetensors"):
        with safe_open(file, framework="numpy") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return tensors


def broken_copy(tmp_path: Path, variant: str = "gqa_tied_eoi", **edits) -> Path:
    return hf_fixtures.broken_copy(FIXTURES, tmp_path, variant, **edits)


# ---------------------------------------------------------------- parity with transformers


def test_fixtures_cover_every_feature():
    a, params, _ = imported("gqa_tied_eoi")
    b, _, _ = imported("mha_untied")
    assert a.tie_word_embeddings and set(params) == {"shared", "encoder", "decoder"}
    assert 0 <= a.eoi_id < a.vocab_size and (expected("gqa_tied_eoi")["input_ids"] == a.eoi_id).any()
    assert np.abs(np.asarray(params["shared"]["eoi_embedding"])).max() > 0
    assert a.num_encoder_layers != a.num_decoder_layers and a.stack("encoder").kv_heads == 2 and a.kv_heads == 1
    assert a.rope_linear_factor == 2.0 and a.rope_local_theta != a.rope_theta and a.final_logit_softcapping
    assert a.query_pre_attn_scalar != a.d_kv and a.decoder_start_id == 2
    assert not b.tie_word_embeddings and b.eoi_id == -1 and b.stack("encoder").num_heads != b.num_heads
    assert b.sliding_layers("encoder") == (True,) * 5 + (False,)  # the default 5:1 pattern
    for cfg in (a, b):  # both layer types in both stacks, windows shorter than the inputs
        for stack in ("encoder", "decoder"):
            assert set(cfg.sliding_layers(stack)) == {True, False}
        assert cfg.sliding_window < expected("mha_untied")["input_ids"].shape[1]
    assert (a.sliding_window % 2, b.sliding_window % 2) == (1, 0)  # the encoder's window splits both ways
    assert (FIXTURES / "gqa_tied_eoi" / "model.safetensors.index.json").is_file()  # sharded
    assert any(name.startswith(VISION_PREFIXES) for name in stored_tensors(FIXTURES / "mha_untied"))  # skipped


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


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_cached_steps_equal_the_full_forward_pass(scan):
    cfg, params, _ = imported("gqa_tied_eoi", scan)
    enc = jnp.asarray(expected("gqa_tied_eoi")["input_ids"])
    targets = jnp.asarray(np.random.default_rng(0).integers(4, cfg.vocab_size, (3, 9)))
    decoder_inputs = shift_right(targets, cfg.decoder_start_id)
    full = forward(cfg)(params, enc, decoder_inputs)
    steps, cache = hf_fixtures.decode_step_by_step(cfg, params, enc, decoder_inputs)
    layer = cache["decoder"]["layers" if scan else "layers_0"]["self_attention"]
    assert {"cached_key", "cached_cross_key"} <= set(layer)  # merged: the decoder's keys and the encoder's
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
    # A sliding layer keeps only its window (written round-robin); scanned layers share one full-length shape.
    lengths = hf_fixtures.self_cache_lengths(cfg, cache)
    window = decoder_inputs.shape[1] if scan else cfg.sliding_window
    assert cfg.sliding_window < decoder_inputs.shape[1]
    assert lengths == {True: {window}, False: {decoder_inputs.shape[1]}}, lengths


def test_beam_search_and_sampling():
    cfg, params, _ = imported("gqa_tied_eoi")
    hf_fixtures.check_beam_search_and_sampling(cfg, params, jnp.asarray(expected("gqa_tied_eoi")["input_ids"]))


# ---------------------------------------------------------------- export round trips


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_round_trip(variant, scan, tmp_path):
    hf_fixtures.check_export_round_trip(tmp_path, *imported(variant, scan), scan)
    original, exported = stored_tensors(FIXTURES / variant), stored_tensors(tmp_path)
    text = {k for k in original if not k.startswith(VISION_PREFIXES)}
    # Exactly the text tensors transformers itself saves, plus a placeholder vision tower of zeros.
    assert {k for k in exported if not k.startswith(VISION_PREFIXES)} == text
    assert all(np.array_equal(original[k], exported[k]) for k in text)
    placeholder = [v for k, v in exported.items() if k.startswith(VISION_PREFIXES)]
    assert placeholder and not any(v.any() for v in placeholder) and sum(v.size for v in placeholder) < 5000
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "t5gemma2" and written["architectures"] == ["T5Gemma2ForConditionalGeneration"]


def test_the_text_encoders_module_path_is_read_too(tmp_path):
    # transformers saves model.encoder.layers.* but also loads model.encoder.text_model.layers.* (its module path).
    directory = broken_copy(tmp_path, "mha_untied")
    tensors = stored_tensors(directory)
    renamed = {k.replace("model.encoder.", "model.encoder.text_model.") if not k.startswith(VISION_PREFIXES) else k: v
               for k, v in tensors.items()}
    assert sum(k.startswith("model.encoder.text_model.") for k in renamed) > 10
    save_file(renamed, directory / "model.safetensors", metadata={"format": "pt"})
    cfg, params, _ = load_hf_t5(directory)
    a, b = flat(params), flat(imported("mha_untied")[1])
    assert cfg == imported("mha_untied")[0] and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_init_from_takes_architecture_and_gemma_tokenizer():
    config = config_lib.base_config()
    directory = FIXTURES / "gqa_tied_eoi"
    config.init_from = f"hf:{directory}"
    pretrained.apply_pretrained_architecture(config)
    assert config.tokenizer.model_path == str(directory / "tokenizer.model") and config.tokenizer.extra_ids == 0
    cfg = imported("gqa_tied_eoi")[0]
    assert config_lib.resolve_model_config(config.model, cfg.vocab_size) == cfg


def test_a_tiny_t5gemma2_learns():
    # Scanned and rematerialised: the per-layer sliding flag picks both the window and the RoPE base.
    cfg = ModelConfig.from_preset("t5gemma2_tiny", vocab_size=64, d_model=32, d_ff=64, encoder_d_ff=96, d_kv=8,
                                  query_pre_attn_scalar=8.0, sliding_window=4, eoi_id=63, scan_layers=True,
                                  remat_policy="full")
    hf_fixtures.check_learns_to_copy(cfg)


# ---------------------------------------------------------------- bad input: one line, before any placement


@pytest.mark.parametrize("edits, match", [
    ({"decoder__use_sliding_attention_everywhere": True},
     r"decoder\.use_sliding_attention_everywhere is a field Sora does not know"),
    ({"encoder__pixel_shuffle": 2}, r"encoder\.pixel_shuffle is a field Sora does not know"),
    ({"encoder__text_config__use_bidirectional_attention": True},
     r"encoder\.text_config\.use_bidirectional_attention is true"),
    ({"decoder__rope_parameters__full_attention": {"rope_type": "yarn", "factor": 4.0}},
     r"decoder\.rope_parameters\.full_attention has rope_type 'yarn'"),
    ({"decoder__rope_parameters__sliding_attention": {"rope_type": "linear", "factor": 2.0}},
     r"decoder\.rope_parameters\.sliding_attention has rope_type 'linear'"),
    ({"decoder__layer_types": ["sliding_attention", "chunked_attention"]},
     r"decoder\.layer_types has 'chunked_attention'"),
    ({"decoder__hidden_activation": "relu"}, r"decoder\.hidden_activation is 'relu'"),
    ({"decoder__head_dim": 4}, r"decoder\.head_dim is 4 but encoder\.text_config\.head_dim is 8"),
    ({"decoder__rope_parameters__sliding_attention": {"rope_type": "default", "rope_theta": 60.0}},
     r"decoder\.rope_parameters is .* but encoder\.text_config\.rope_parameters is"),
    ({"encoder__text_config__intermediate_size": 44},
     r"tensor model\.encoder\.layers\.0\.mlp\.gate_proj\.weight has shape \[40, 16\] but .* implies \[44, 16\]"),
    ({"encoder__text_config__num_hidden_layers": 2,
      "encoder__text_config__layer_types": ["sliding_attention", "full_attention"]},
     r"unexpected tensor model\.encoder\.layers\.2\."),
    ({"model_type": "gemma3"}, r"model_type is 'gemma3'"),
    ({"architectures": ["T5Gemma2ForSequenceClassification"]}, r"architectures is .*T5Gemma2ForConditionalGen"),
    ({"attention_dropout": 0.1}, r"attention_dropout is 0\.1"),
])
def test_bad_checkpoints_fail_with_one_line(tmp_path, no_device_put, edits, match):
    directory = broken_copy(tmp_path, **edits)
    with pytest.raises(SoraError, match=match) as error:
        load_hf_t5(directory)
    assert "\n" not in str(error.value)


def test_a_tied_copy_that_differs_is_refused(tmp_path, no_device_put):
    directory = broken_copy(tmp_path)
    with safe_open(directory / "model-00001-of-00003.safetensors", framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    embed = stored_tensors(FIXTURES / "gqa_tied_eoi")["model.encoder.embed_tokens.weight"]
    tensors["model.decoder.embed_tokens.weight"] = embed + 1.0  # a save that kept the decoder's copy, edited
    save_file(tensors, directory / "model-00001-of-00003.safetensors", metadata={"format": "pt"})
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.decoder.embed_tokens.weight"] = "model-00001-of-00003.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SoraError, match=r"model\.decoder\.embed_tokens\.weight differs from "
                                        r"model\.encoder\.embed_tokens\.weight"):
        load_hf_t5(directory)


@pytest.mark.parametrize("fields, match", [
    (dict(attn_logit_softcapping=50.0), r"attn_logit_softcapping is set but T5Gemma 2 normalises"),
    (dict(encoder_d_model=96), r"encoder_d_model is 96 but T5Gemma 2 ties"),
    (dict(eoi_id=-2), r"eoi_id must be a token id or -1"),
    (dict(rope_linear_factor=-1.0), r"rope_linear_factor must be a number >= 0"),
    (dict(family="t5gemma"), r"rope_local_theta is set but family is \"t5gemma\""),
    (dict(family="t5"), r"is set but family is \"t5\""),
])
def test_config_validation(fields, match):
    with pytest.raises(SoraError, match=match):
        ModelConfig.from_preset("t5gemma2_tiny", **{"vocab_size": 64, **fields})


# ---------------------------------------------------------------- presets and FLOPs


def test_default_layer_pattern_is_five_sliding_then_one_global():
    cfg = ModelConfig.from_preset("t5gemma2_1b_1b")
    assert cfg.sliding_layers("encoder")[:12] == ((True,) * 5 + (False,)) * 2
    assert cfg.sliding_layers("decoder").count(False) == 26 // 6


@pytest.mark.parametrize("name, total", [("t5gemma2_270m_270m", 370e6), ("t5gemma2_1b_1b", 1.7e9),
                                         ("t5gemma2_4b_4b", 7e9)])
def test_presets_have_the_published_sizes(name, total):
    # The T5Gemma 2 paper's totals without the vision encoder ("about 370M, 1.7B and 7B"): embeddings counted once.
    cfg = ModelConfig.from_preset(name, scan_layers=True)
    tokens = jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0), tokens, tokens)["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
    assert abs(count - total) / total < 0.02, count


def test_flops_count_every_kernel_each_token_passes():
    cfg = ModelConfig.from_preset("t5gemma2_tiny", vocab_size=64)  # merged attention: no cross q/o
    tokens = jnp.ones((1, 4), jnp.int32)
    shapes = traverse_util.flatten_dict(nn.unbox(jax.eval_shape(EncoderDecoder(cfg).init, jax.random.key(0),
                                                                tokens, tokens)["params"]))
    kernels = {path: int(np.prod(x.shape)) for path, x in shapes.items() if path[-1] == "kernel"}
    encoder = sum(n for p, n in kernels.items() if p[0] == "encoder")
    decoder = sum(n for p, n in kernels.items() if p[0] == "decoder")
    self_kv = sum(n for p, n in kernels.items() if p[0] == "decoder" and p[-2] in ("k", "v"))
    flops = train_step_flops(cfg, batch_size=2, input_length=8, target_length=4)
    assert flops.encoder_weights == 2 * (2 * 8) * encoder
    assert flops.decoder_weights == 2 * (2 * 4) * decoder  # the k/v kernels also project the decoder's tokens
    assert flops.cross_kv == 2 * (2 * 8) * self_kv  # ... and the encoder's
