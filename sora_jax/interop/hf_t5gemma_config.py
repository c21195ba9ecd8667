"""A Hugging Face T5Gemma `config.json` <-> Sora's ModelConfig (family "t5gemma").

The file nests one module config per stack ("encoder", "decoder"; a missing decoder copies the encoder, as
transformers does), each with T5GemmaModuleConfig's defaults. Sora's model lets the stacks differ in width, MLP
width, depth, heads and layer pattern (T5Gemma 9B-2B); everything else must agree between them. Whatever Sora would
compute differently from transformers (another activation, a RoPE scaling, attention biases) is refused, naming the
field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sora_jax.errors import SoraError
from sora_jax.interop.hf_config_checks import TANH_GELUS, check_gemma_lm, check_positive_ints, checked_layer_types, fail
from sora_jax.model.config import SLIDING, ModelConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "t5gemma"
ARCHITECTURES = ("T5GemmaForConditionalGeneration",)

# transformers' T5GemmaModuleConfig keyword defaults (4.57).
MODULE_DEFAULTS: dict[str, Any] = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
    rope_theta=10000.0, attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
    final_logit_softcapping=30.0, attn_logit_softcapping=50.0, rope_scaling=None, pad_token_id=0, eos_token_id=1,
    bos_token_id=2,
)
_PER_STACK = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "layer_types")
_SHARED = ("head_dim", "rms_norm_eps", "rope_theta", "query_pre_attn_scalar", "attn_logit_softcapping",
           "sliding_window")
# Fields of a module config that change nothing Sora computes (bookkeeping, serving, or the other stack's size).
_MODULE_IGNORED = frozenset({
    "model_type", "initializer_range", "use_cache", "max_position_embeddings", "is_decoder", "dropout_rate",
    "attention_dropout", "cross_attention_hidden_size", "torch_dtype", "dtype", "transformers_version",
    "_name_or_path", "architectures", "output_hidden_states", "output_attentions", "return_dict", "classifier_dropout",
    "tie_word_embeddings", "is_encoder_decoder", "add_cross_attention", "chunk_size_feed_forward", "id2label",
    "label2id", "problem_type", "tokenizer_class", "sep_token_id", "decoder_start_token_id", "torchscript",
    "use_bfloat16", "pruned_heads", "tie_encoder_decoder", "finetuning_task", "prefix", "task_specific_params",
    "tf_legacy_loss", "bad_words_ids", "num_labels",
})
_TOP_FIELDS = frozenset({
    "encoder", "decoder", "model_type", "architectures", "is_encoder_decoder", "dropout_rate", "attention_dropout",
    "classifier_dropout_rate", "tie_word_embeddings", "vocab_size", "pad_token_id", "eos_token_id", "bos_token_id",
    "decoder_start_token_id", "initializer_range", "use_cache", "torch_dtype", "dtype", "transformers_version",
    "_name_or_path", "quantization_config",
})



def _module(raw: dict[str, Any], name: str, file: Path) -> dict[str, Any]:
    sub = raw.get(name)
    if not isinstance(sub, dict):
        fail(file, name, f"is {type(sub).__name__}, not an object", "use the config.json saved with the weights")
    unknown = sorted(set(sub) - set(MODULE_DEFAULTS) - _MODULE_IGNORED)
    if unknown:
        log.warning("%s: ignoring %s field(s) Sora does not know: %s.", file, name, ", ".join(unknown))
    values = {**MODULE_DEFAULTS, **sub}
    if "vocab_size" in raw:  # T5GemmaConfig copies its vocab_size into both modules
        values["vocab_size"] = raw["vocab_size"]
    where = f"{name}."
    if values["hidden_activation"] not in TANH_GELUS:
        fail(file, where + "hidden_activation", f"is {values['hidden_activation']!r}",
              "Sora's T5Gemma MLP is GeGLU with tanh GELU (gelu_pytorch_tanh)")
    if values["attention_bias"]:
        fail(file, where + "attention_bias", "is true", "Sora's attention projections have no bias")
    scaling = values["rope_scaling"]
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind != "default":
            fail(file, where + "rope_scaling", f"has type {kind!r}",
                  "Sora implements plain RoPE only (rope_scaling null or {\"rope_type\": \"default\"})")
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "head_dim", "num_key_value_heads")
    check_positive_ints(values, fields, file, where)
    layers = values["num_hidden_layers"]
    types = values["layer_types"]
    if types is None:  # T5GemmaModuleConfig's default: sliding, full, sliding, ...
        types = [SLIDING if (i + 1) % 2 else "full_attention" for i in range(layers)]
    values["layer_types"] = checked_layer_types(types, layers, file, where)
    if SLIDING in types and not isinstance(values["sliding_window"], int):
        fail(file, where + "sliding_window", f"is {values['sliding_window']!r}", "write the window (an integer)")
    if SLIDING not in types:
        values["sliding_window"] = 0
    return values


def _optional_number(value: Any, file: Path, field: str) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        fail(file, field, f"is {value!r}", "write a positive number or null")
    return float(value)


def config_from_hf(raw: dict[str, Any], file: Path, *, dtype: str = "float32", param_dtype: str = "float32",
                   scan_layers: bool = False) -> ModelConfig:
    """ModelConfig of the T5GemmaForConditionalGeneration a parsed `config.json` describes."""
    check_gemma_lm(raw, file, ARCHITECTURES[0])
    unknown = sorted(set(raw) - _TOP_FIELDS)
    if unknown:
        log.warning("%s: ignoring field(s) Sora does not know: %s.", file, ", ".join(unknown))
    enc = _module(raw, "encoder", file)
    dec = _module({**raw, "decoder": raw.get("decoder", raw.get("encoder"))}, "decoder", file)
    for field in _SHARED:
        if enc[field] != dec[field] and not (field == "sliding_window" and 0 in (enc[field], dec[field])):
            fail(file, f"decoder.{field}", f"is {dec[field]!r} but encoder.{field} is {enc[field]!r}",
                  "Sora's T5Gemma needs the same value in both stacks")
    pad = raw.get("pad_token_id", dec["pad_token_id"])
    eos = raw.get("eos_token_id", dec["eos_token_id"])
    # transformers shifts labels right with decoder.bos_token_id, and generate starts from it too.
    start = raw.get("decoder_start_token_id") or dec["bos_token_id"]
    tied = raw.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):
        fail(file, "tie_word_embeddings", f"is {tied!r}", "write true or false")
    dropout = raw.get("dropout_rate", 0.0)
    fields = dict(
        vocab_size=dec["vocab_size"], d_model=dec["hidden_size"], d_ff=dec["intermediate_size"],
        num_heads=dec["num_attention_heads"], num_kv_heads=dec["num_key_value_heads"], d_kv=dec["head_dim"],
        num_encoder_layers=enc["num_hidden_layers"], num_decoder_layers=dec["num_hidden_layers"],
        dropout_rate=float(dropout) if isinstance(dropout, (int, float)) else dropout,
        feed_forward_proj="gated-gelu", tie_word_embeddings=tied, layer_norm_epsilon=float(dec["rms_norm_eps"]),
        dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, pad_id=pad, eos_id=eos,
        decoder_start_id=start, family="t5gemma", rope_theta=float(dec["rope_theta"]),
        query_pre_attn_scalar=_optional_number(dec["query_pre_attn_scalar"], file, "decoder.query_pre_attn_scalar"),
        attn_logit_softcapping=_optional_number(dec["attn_logit_softcapping"], file,
                                                "decoder.attn_logit_softcapping"),
        final_logit_softcapping=_optional_number(dec["final_logit_softcapping"], file,
                                                 "decoder.final_logit_softcapping"),
        sliding_window=max(enc["sliding_window"], dec["sliding_window"]),
        encoder_layer_types=enc["layer_types"], decoder_layer_types=dec["layer_types"],
    )
    if any(enc[f] != dec[f] for f in _PER_STACK[:2] + _PER_STACK[3:5]):
        fields.update(encoder_d_model=enc["hidden_size"], encoder_d_ff=enc["intermediate_size"],
                      encoder_num_heads=enc["num_attention_heads"], encoder_num_kv_heads=enc["num_key_value_heads"])
    try:
        return ModelConfig(**fields)
    except SoraError as e:  # a value transformers accepts but Sora's model cannot take: name the file
        raise SoraError(f"{file}: {str(e).replace('ModelConfig.', '')}") from e


def _module_to_hf(cfg: ModelConfig, stack: str, cross_width: int | None) -> dict[str, Any]:
    sub = cfg.stack(stack)
    types = [SLIDING if s else "full_attention" for s in cfg.sliding_layers(stack)]
    module = {
        "model_type": "t5_gemma_module", "vocab_size": cfg.vocab_size, "hidden_size": sub.d_model,
        "intermediate_size": sub.d_ff, "num_hidden_layers": len(types), "num_attention_heads": sub.num_heads,
        "num_key_value_heads": sub.kv_heads, "head_dim": cfg.d_kv, "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.layer_norm_epsilon, "rope_theta": cfg.rope_theta, "attention_bias": False,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar or cfg.d_kv,
        "sliding_window": cfg.sliding_window or None, "layer_types": types,
        "final_logit_softcapping": cfg.final_logit_softcapping or None,
        "attn_logit_softcapping": cfg.attn_logit_softcapping or None, "dropout_rate": cfg.dropout_rate,
        "attention_dropout": 0.0, "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id,
        "bos_token_id": cfg.decoder_start_id, "is_decoder": stack == "decoder",
        # transformers' save_pretrained drops the head when the decoder module says tied: keep them in step.
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    if cross_width is not None:
        module["cross_attention_hidden_size"] = cross_width
    return module


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` transformers' T5GemmaForConditionalGeneration rebuilds this model from."""
    return {
        "architectures": list(ARCHITECTURES), "model_type": MODEL_TYPE, "is_encoder_decoder": True,
        "encoder": _module_to_hf(cfg, "encoder", None),
        "decoder": _module_to_hf(cfg, "decoder", cfg.stack("encoder").d_model),
        "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_word_embeddings,
        "dropout_rate": cfg.dropout_rate, "attention_dropout": 0.0, "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id, "bos_token_id": cfg.decoder_start_id, "use_cache": True,
    }


def generation_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """`generation_config.json`: generate starts T5Gemma's decoder from decoder_start_token_id (its bos)."""
    return {"decoder_start_token_id": cfg.decoder_start_id, "bos_token_id": cfg.decoder_start_id,
            "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id}
