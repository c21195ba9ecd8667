"""A Hugging Face T5Gemma 2 `config.json` <-> Sora's ModelConfig (family "t5gemma2"), text only.

The file nests an encoder (a text_config, a SigLIP vision_config and image-token fields) and a decoder (a text
config). Sora reads the two text configs with transformers 5's defaults (T5Gemma2TextConfig), older spellings
included (rope_theta / rope_local_base_freq / rope_scaling, sliding_window_pattern), and skips the vision tower.
The stacks may differ in depth, MLP width, heads and layer pattern; everything else must agree (transformers itself
requires equal widths and vocabularies). A key Sora does not know, or a value it would compute differently from
transformers, is refused naming the field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sora_jax.errors import SoraError
from sora_jax.interop import hf_t5gemma2_layout
from sora_jax.interop.hf_config_checks import TANH_GELUS, check_gemma_lm, check_positive_ints, checked_layer_types, fail
from sora_jax.model.config import FULL, LAYER_TYPES, SLIDING, ModelConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "t5gemma2"
ARCHITECTURES = ("T5Gemma2ForConditionalGeneration",)

# T5Gemma2TextConfig's defaults (transformers 5.25), the legacy RoPE spellings' included.
TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
    pad_token_id=0, eos_token_id=1, bos_token_id=2, rope_parameters=None, attention_bias=False,
    attention_dropout=0.0, query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
    final_logit_softcapping=None, attn_logit_softcapping=None, rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0, rope_scaling=None, sliding_window_pattern=6,
)
# Fields that change nothing Sora computes (bookkeeping, serving, training-only settings read elsewhere).
_BOOKKEEPING = frozenset({
    "model_type", "initializer_range", "use_cache", "max_position_embeddings", "dropout_rate", "torch_dtype", "dtype",
    "transformers_version", "_name_or_path", "architectures", "output_hidden_states", "output_attentions",
    "return_dict", "tie_word_embeddings", "is_encoder_decoder", "chunk_size_feed_forward", "id2label", "label2id",
    "problem_type", "tokenizer_class", "sep_token_id", "decoder_start_token_id", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "torchscript", "use_bfloat16", "pruned_heads", "tie_encoder_decoder",
    "finetuning_task", "prefix", "task_specific_params", "tf_legacy_loss", "bad_words_ids", "num_labels",
    "cache_implementation", "classifier_dropout_rate", "hidden_act",
})
_ENCODER_FIELDS = frozenset({"text_config", "vision_config", "mm_tokens_per_image", "boi_token_index",
                             "eoi_token_index", "image_token_index"})
_TOP_FIELDS = frozenset({"encoder", "decoder", "eoi_token_index", "image_token_index", "vocab_size", "pad_token_id",
                         "eos_token_id", "bos_token_id", "quantization_config", "attention_dropout"})
_SHARED = ("hidden_size", "vocab_size", "head_dim", "rms_norm_eps", "query_pre_attn_scalar", "rope")



def _check_keys(raw: dict[str, Any], known: frozenset[str] | set[str], file: Path, where: str) -> None:
    unknown = sorted(set(raw) - set(known) - _BOOKKEEPING)
    if unknown:
        fail(file, where + unknown[0], "is a field Sora does not know" + (f" (and {len(unknown) - 1} more)"
              if len(unknown) > 1 else ""), "Sora imports transformers 5's T5Gemma 2 text fields only; remove it if "
              "it changes nothing")


def _rope(values: dict[str, Any], file: Path, where: str) -> dict[str, tuple[float, float]]:
    """{layer type: (theta, linear factor or 0)} from rope_parameters, or from the legacy fields."""
    params = values["rope_parameters"]
    if params is None:
        full = {"rope_type": "default", "rope_theta": values["rope_theta"], **(values["rope_scaling"] or {})}
        params = {FULL: full, SLIDING: {"rope_type": "default", "rope_theta": values["rope_local_base_freq"]}}
    if not isinstance(params, dict) or set(params) - set(LAYER_TYPES):
        fail(file, where + "rope_parameters", f"is {params!r}",
              f"give one entry per layer type ({', '.join(LAYER_TYPES)})")
    out = {}
    for layer_type in LAYER_TYPES:
        entry = params.get(layer_type) or {"rope_type": "default"}
        kind = entry.get("rope_type", entry.get("type", "default"))
        theta = entry.get("rope_theta", TEXT_DEFAULTS["rope_theta" if layer_type == FULL else "rope_local_base_freq"])
        factor = entry.get("factor", 1.0) if kind == "linear" else 0.0
        if kind not in ("default", "linear") or (kind == "linear" and layer_type == SLIDING):
            fail(file, f"{where}rope_parameters.{layer_type}", f"has rope_type {kind!r}",
                  "Sora implements default RoPE, and linear scaling on full_attention layers")
        if not isinstance(theta, (int, float)) or theta <= 0 or not isinstance(factor, (int, float)) or factor < 0:
            fail(file, f"{where}rope_parameters.{layer_type}", f"is {entry!r}", "write a positive rope_theta/factor")
        out[layer_type] = (float(theta), 0.0 if factor == 1.0 else float(factor))
    return out


def _text(raw: Any, file: Path, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        fail(file, where.rstrip("."), f"is {type(raw).__name__}, not an object", "use the config.json saved with "
              "the weights")
    _check_keys(raw, set(TEXT_DEFAULTS) | {"_sliding_window_pattern", "use_bidirectional_attention"}, file, where)
    if raw.get("use_bidirectional_attention"):  # Gemma 3's flag (EmbeddingGemma); T5Gemma 2's configs drop it
        fail(file, where + "use_bidirectional_attention", "is true", "T5Gemma 2's stacks decide their own masks; "
              "remove it")
    values = {**TEXT_DEFAULTS, **raw}
    if values["hidden_activation"] not in TANH_GELUS:
        fail(file, where + "hidden_activation", f"is {values['hidden_activation']!r}",
              "Sora's T5Gemma 2 MLP is GeGLU with tanh GELU (gelu_pytorch_tanh)")
    if values["attention_bias"]:
        fail(file, where + "attention_bias", "is true", "Sora's attention projections have no bias")
    if values["attention_dropout"]:
        fail(file, where + "attention_dropout", f"is {values['attention_dropout']!r}",
              "Sora has no dropout on attention probabilities; set it to 0")
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "head_dim", "num_key_value_heads")
    check_positive_ints(values, fields, file, where)
    layers = values["num_hidden_layers"]
    types = values["layer_types"]
    if types is None:  # Gemma 3: every sliding_window_pattern-th layer is global
        period = raw.get("_sliding_window_pattern", values["sliding_window_pattern"])
        types = [SLIDING if (i + 1) % period else FULL for i in range(layers)]
    values["layer_types"] = checked_layer_types(types, layers, file, where)
    if SLIDING in types and (not isinstance(values["sliding_window"], int) or values["sliding_window"] < 1):
        fail(file, where + "sliding_window", f"is {values['sliding_window']!r}", "write the window (an integer)")
    values["sliding_window"] = values["sliding_window"] if SLIDING in types else 0
    values["rope"] = _rope(values, file, where)
    if values["attn_logit_softcapping"] is not None:
        log.warning("%s: ignoring %sattn_logit_softcapping, as transformers' T5Gemma 2 does (QK-norm replaces it).",
                    file, where)
    return values


def config_from_hf(raw: dict[str, Any], file: Path, *, dtype: str = "float32", param_dtype: str = "float32",
                   scan_layers: bool = False) -> ModelConfig:
    """ModelConfig of the text part of the T5Gemma2ForConditionalGeneration a parsed `config.json` describes."""
    check_gemma_lm(raw, file, ARCHITECTURES[0])
    _check_keys(raw, _TOP_FIELDS, file, "")
    encoder = raw.get("encoder") or {}
    if not isinstance(encoder, dict):
        fail(file, "encoder", f"is {type(encoder).__name__}, not an object", "use the config.json saved with the "
              "weights")
    _check_keys(encoder, _ENCODER_FIELDS, file, "encoder.")
    if encoder.get("vision_config") is not None:
        log.info("%s: skipping the vision tower (Sora's T5Gemma 2 is text only).", file)
    enc = _text(encoder.get("text_config") or {}, file, "encoder.text_config.")
    dec = _text(raw.get("decoder") or {}, file, "decoder.")
    if "vocab_size" in raw:
        enc["vocab_size"] = dec["vocab_size"] = raw["vocab_size"]
    for field in _SHARED:
        if enc[field] != dec[field]:
            name = "rope_parameters" if field == "rope" else field  # as read: {layer type: (theta, factor)}
            fail(file, f"decoder.{name}", f"is {dec[field]!r} but encoder.text_config.{name} is {enc[field]!r}",
                  "Sora's T5Gemma 2 needs the same value in both stacks")
    if 0 not in (enc["sliding_window"], dec["sliding_window"]) and enc["sliding_window"] != dec["sliding_window"]:
        fail(file, "decoder.sliding_window", f"is {dec['sliding_window']} but encoder.text_config.sliding_window is "
              f"{enc['sliding_window']}", "Sora's T5Gemma 2 needs one window for both stacks")
    tied = raw.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):
        fail(file, "tie_word_embeddings", f"is {tied!r}", "write true or false")
    eoi = raw.get("eoi_token_index", encoder.get("eoi_token_index", 256_000))
    if eoi is not None and (not isinstance(eoi, int) or isinstance(eoi, bool) or eoi < 0):
        fail(file, "eoi_token_index", f"is {eoi!r}", "write a token id")
    (full_theta, factor), (local_theta, _) = dec["rope"][FULL], dec["rope"][SLIDING]
    dropout = raw.get("dropout_rate", 0.0)
    fields = dict(
        vocab_size=dec["vocab_size"], d_model=dec["hidden_size"], d_ff=dec["intermediate_size"],
        num_heads=dec["num_attention_heads"], num_kv_heads=dec["num_key_value_heads"], d_kv=dec["head_dim"],
        num_encoder_layers=enc["num_hidden_layers"], num_decoder_layers=dec["num_hidden_layers"],
        dropout_rate=float(dropout) if isinstance(dropout, (int, float)) else dropout,
        feed_forward_proj="gated-gelu", tie_word_embeddings=tied, layer_norm_epsilon=float(dec["rms_norm_eps"]),
        dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers,
        pad_id=raw.get("pad_token_id", dec["pad_token_id"]), eos_id=raw.get("eos_token_id", dec["eos_token_id"]),
        # transformers shifts labels right with decoder.bos_token_id, and generate starts from it too.
        decoder_start_id=raw.get("decoder_start_token_id") or dec["bos_token_id"], family="t5gemma2",
        rope_theta=full_theta, rope_local_theta=local_theta, rope_linear_factor=factor,
        query_pre_attn_scalar=float(dec["query_pre_attn_scalar"]),
        final_logit_softcapping=float(dec["final_logit_softcapping"] or 0.0),
        sliding_window=max(enc["sliding_window"], dec["sliding_window"]),
        encoder_layer_types=enc["layer_types"], decoder_layer_types=dec["layer_types"],
        # An end-of-image id past the vocabulary is never looked up: Sora calls that "none".
        eoi_id=eoi if eoi is not None and eoi < dec["vocab_size"] else -1,
    )
    if any(enc[f] != dec[f] for f in ("intermediate_size", "num_attention_heads", "num_key_value_heads")):
        fields.update(encoder_d_ff=enc["intermediate_size"], encoder_num_heads=enc["num_attention_heads"],
                      encoder_num_kv_heads=enc["num_key_value_heads"])
    try:
        return ModelConfig(**fields)
    except SoraError as e:  # a value transformers accepts but Sora's model cannot take: name the file
        raise SoraError(f"{file}: {str(e).replace('ModelConfig.', '')}") from e


def _text_to_hf(cfg: ModelConfig, stack: str) -> dict[str, Any]:
    sub = cfg.stack(stack)
    scalar = cfg.query_pre_attn_scalar or cfg.d_kv
    if scalar != int(scalar):  # transformers 5 types it int
        raise SoraError(f"query_pre_attn_scalar {scalar} is not a whole number, which transformers' T5Gemma 2 "
                        "config cannot hold; export a model with a whole-number scalar.")
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_linear_factor:
        full.update(rope_type="linear", factor=cfg.rope_linear_factor)
    return {
        "model_type": f"t5gemma2_{'text' if stack == 'encoder' else 'decoder'}", "vocab_size": cfg.vocab_size,
        "hidden_size": sub.d_model, "intermediate_size": sub.d_ff,
        "num_hidden_layers": getattr(cfg, f"num_{stack}_layers"), "num_attention_heads": sub.num_heads,
        "num_key_value_heads": sub.kv_heads, "head_dim": cfg.d_kv, "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.layer_norm_epsilon, "attention_bias": False, "attention_dropout": 0.0,
        "query_pre_attn_scalar": int(scalar),
        "sliding_window": cfg.sliding_window or None,
        "layer_types": [SLIDING if s else FULL for s in cfg.sliding_layers(stack)],
        "rope_parameters": {FULL: full, SLIDING: local},
        "final_logit_softcapping": cfg.final_logit_softcapping or None, "attn_logit_softcapping": None,
        "dropout_rate": cfg.dropout_rate, "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id,
        "bos_token_id": cfg.decoder_start_id, "tie_word_embeddings": cfg.tie_word_embeddings,
    }


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` transformers' T5Gemma2ForConditionalGeneration rebuilds this model from, with the
    placeholder vision tower of hf_t5gemma2_layout."""
    eoi = cfg.eoi_id if cfg.eoi_id >= 0 else cfg.vocab_size  # an id no token has
    encoder = {
        "model_type": "t5gemma2_encoder", "text_config": _text_to_hf(cfg, "encoder"),
        "vision_config": dict(hf_t5gemma2_layout.PLACEHOLDER_VISION),
        "mm_tokens_per_image": hf_t5gemma2_layout.PLACEHOLDER_MM_TOKENS, "eoi_token_index": eoi,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    return {
        "architectures": list(ARCHITECTURES), "model_type": MODEL_TYPE, "is_encoder_decoder": True,
        "encoder": encoder, "decoder": _text_to_hf(cfg, "decoder"), "vocab_size": cfg.vocab_size,
        "eoi_token_index": eoi, "tie_word_embeddings": cfg.tie_word_embeddings,
        "dropout_rate": cfg.dropout_rate, "attention_dropout": 0.0, "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id, "bos_token_id": cfg.decoder_start_id, "use_cache": True,
    }


def generation_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """`generation_config.json`: generate starts T5Gemma 2's decoder from decoder_start_token_id (its bos)."""
    return {"decoder_start_token_id": cfg.decoder_start_id, "bos_token_id": cfg.decoder_start_id,
            "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id}
