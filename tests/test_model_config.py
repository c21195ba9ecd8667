"""ModelConfig validation and presets."""

import dataclasses

import pytest

from sora_jax.errors import SoraError
from sora_jax.model import PRESETS, ModelConfig


def _tiny(**overrides):
    return ModelConfig(**{**PRESETS["tiny"], "vocab_size": 64, **overrides})


def test_tiny_preset_builds():
    cfg = _tiny()
    assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (32, 2, 16, 64)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 2)


@pytest.mark.parametrize(
    "field, value",
    [
        ("d_model", 0),
        ("d_model", -4),
        ("vocab_size", 0),
        ("num_heads", 1.5),
        ("num_encoder_layers", 0),
        ("feed_forward_proj", "swiglu"),
        ("remat_policy", "everything"),
        ("dtype", "float64"),
        ("param_dtype", "int8"),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.1),
        ("layer_norm_epsilon", 0.0),
        ("relative_attention_num_buckets", 2),
        ("relative_attention_max_distance", 4),
        ("pad_id", 64),
        ("eos_id", -1),
        ("scan_layers", "yes"),
    ],
)
def test_invalid_field_raises_sora_error_naming_it(field, value):
    with pytest.raises(SoraError, match=rf"ModelConfig\.{field}\b") as info:
        _tiny(**{field: value})
    assert "\n" not in str(info.value)


def test_unknown_preset_and_unknown_override_raise():
    with pytest.raises(SoraError, match="t5_v1_1_base"):
        ModelConfig.from_preset("t5_huge", vocab_size=10)
    with pytest.raises(SoraError, match="d_modle"):
        ModelConfig.from_preset("tiny", vocab_size=10, d_modle=8)


@pytest.mark.parametrize(
    "name, d_model, d_ff, heads, layers",
    [
        ("t5_v1_1_small", 512, 1024, 6, 8),
        ("t5_v1_1_base", 768, 2048, 12, 12),
        ("t5_v1_1_large", 1024, 2816, 16, 24),
        ("t5_v1_1_xl", 2048, 5120, 32, 24),
        ("t5_v1_1_xxl", 4096, 10240, 64, 24),
    ],
)
def test_t5_v1_1_presets_match_hf_sizes(name, d_model, d_ff, heads, layers):
    cfg = ModelConfig(**PRESETS[name])
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv) == (d_model, d_ff, heads, 64)
    assert cfg.num_encoder_layers == cfg.num_decoder_layers == layers
    assert cfg.vocab_size == 32128 and cfg.feed_forward_proj == "gated-gelu" and not cfg.tie_word_embeddings


def test_small_cpu_preset_and_frozen():
    cfg = ModelConfig.from_preset("small_cpu", vocab_size=8000)
    assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (128, 4, 32, 512)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers) == (2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8


def test_remat_policy_maps_to_jax_checkpoint_policies():
    import jax

    assert _tiny(remat_policy="none").remat_fn_policy is None
    assert _tiny(remat_policy="full").remat_fn_policy is None
    assert _tiny(remat_policy="dots_saveable").remat_fn_policy is jax.checkpoint_policies.dots_saveable
