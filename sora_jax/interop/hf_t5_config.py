"""A Hugging Face T5 / mT5 `config.json` <-> Sora's ModelConfig.

Import follows what `transformers` itself does with the file: absent fields take the defaults of HF's
`T5Config` / `MT5Config` (they differ: mT5 defaults to gated-gelu and untied embeddings), and explicit
`dense_act_fn` / `is_gated_act` entries (Flan-T5 and newer saves write them) override what
`feed_forward_proj` implies, because HF's config class lets stored attributes win.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sora_jax.errors import SoraError
from sora_jax.interop.hf_config_checks import TANH_GELUS, fail
from sora_jax.model.config import ModelConfig

log = logging.getLogger(__name__)

MODEL_TYPES = ("t5", "mt5")
ARCHITECTURES = ("T5ForConditionalGeneration", "MT5ForConditionalGeneration", "T5WithLMHeadModel")
# HF activation names equal to Sora's gated-MLP activation, GELU with the tanh approximation.

_COMMON_DEFAULTS: dict[str, Any] = dict(
    d_kv=64, relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
)
# The keyword defaults of transformers' T5Config and MT5Config.
DEFAULTS: dict[str, dict[str, Any]] = {
    "t5": dict(_COMMON_DEFAULTS, vocab_size=32128, d_model=512, d_ff=2048, num_layers=6, num_heads=8,
               feed_forward_proj="relu", tie_word_embeddings=True),
    "mt5": dict(_COMMON_DEFAULTS, vocab_size=250112, d_model=512, d_ff=1024, num_layers=8, num_heads=6,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}

_INT_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
               "relative_attention_num_buckets", "relative_attention_max_distance")
_ARCH_FIELDS = (*_INT_FIELDS, "dropout_rate", "layer_norm_epsilon", "feed_forward_proj", "dense_act_fn",
                "is_gated_act", "tie_word_embeddings", "pad_token_id", "eos_token_id", "decoder_start_token_id",
                "model_type", "architectures", "is_encoder_decoder", "is_decoder", "tie_encoder_decoder",
                "pruned_heads")
# Fields that do not change the network's function: bookkeeping, initialisation, training-only switches,
# generation defaults and classifier-head settings. Read silently and ignored.
_IGNORED_FIELDS = frozenset({
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_bfloat16", "initializer_factor",
    "use_cache", "output_past", "n_positions", "gradient_checkpointing", "tokenizer_class", "task_specific_params",
    "classifier_dropout", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "tf_legacy_loss", "chunk_size_feed_forward", "add_cross_attention", "cross_attention_hidden_size",
    "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "bos_token_id", "sep_token_id",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "prefix", "max_new_tokens",
})
_SORA_TO_HF_NAMES = {"num_encoder_layers": "num_layers", "pad_id": "pad_token_id", "eos_id": "eos_token_id",
                     "decoder_start_id": "decoder_start_token_id"}



def _mlp_kind(raw: dict[str, Any], defaults: dict[str, Any], file: Path) -> str:
    """Sora's feed_forward_proj for the MLP that HF would build from these fields."""
    proj = raw.get("feed_forward_proj", defaults["feed_forward_proj"])
    if not isinstance(proj, str):
        fail(file, "feed_forward_proj", f"is {proj!r}", "write a string such as \"gated-gelu\" or \"relu\"")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        fail(file, "feed_forward_proj", f"is {proj!r}, which is not of the form ACT or gated-ACT",
              "use \"relu\" (T5 v1.0) or \"gated-gelu\" (T5 v1.1, Flan-T5, mT5)")
    implied_gated, implied_act = len(parts) == 2, "gelu_new" if proj == "gated-gelu" else parts[-1]
    gated, act = raw.get("is_gated_act", implied_gated), raw.get("dense_act_fn", implied_act)
    if not isinstance(gated, bool):
        fail(file, "is_gated_act", f"is {gated!r}", "write true or false")
    if gated and act in TANH_GELUS:
        return "gated-gelu"
    if not gated and act == "relu":
        return "relu"
    # Blame the field that introduced the unsupported combination.
    field = ("dense_act_fn" if act != implied_act else "is_gated_act" if gated != implied_gated
             else "feed_forward_proj")
    fail(file, field, f"gives an unsupported MLP (feed_forward_proj={proj!r}, is_gated_act={gated}, "
          f"dense_act_fn={act!r})", "Sora supports only \"relu\" (T5 v1.0) and \"gated-gelu\" with tanh GELU "
          "(T5 v1.1, Flan-T5, mT5)")
    raise AssertionError("unreachable")


def config_from_hf(raw: Any, file: Path, *, dtype: str = "float32", param_dtype: str = "float32",
                   scan_layers: bool = False) -> ModelConfig:
    """ModelConfig of the model described by a parsed HF `config.json` (`file` only names it in errors)."""
    if not isinstance(raw, dict):
        raise SoraError(f"{file} holds a JSON {type(raw).__name__}, not an object; point to the config.json "
                        "that transformers' save_pretrained wrote.")
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        fail(file, "model_type", f"is {model_type!r}",
              f"Sora imports only T5-family encoder-decoders (model_type {' or '.join(MODEL_TYPES)})")
    architectures = raw.get("architectures")
    if architectures is not None and not (isinstance(architectures, list)
                                          and any(a in ARCHITECTURES for a in architectures)):
        fail(file, "architectures", f"is {architectures!r}",
              f"Sora imports full encoder-decoder LM checkpoints ({', '.join(ARCHITECTURES[:2])})")
    for field, wanted in (("is_encoder_decoder", True), ("is_decoder", False), ("tie_encoder_decoder", False)):
        if field in raw and raw[field] is not wanted:
            fail(file, field, f"is {raw[field]!r}", f"Sora needs {str(wanted).lower()} (a T5 encoder-decoder)")
    if raw.get("pruned_heads"):
        fail(file, "pruned_heads", "is not empty", "Sora cannot import a model with pruned attention heads")
    if raw.get("quantization_config") is not None:
        fail(file, "quantization_config", "is set", "export an unquantised float checkpoint first")
    unknown = sorted(set(raw) - set(_ARCH_FIELDS) - _IGNORED_FIELDS - {"quantization_config"})
    if unknown:
        log.warning("%s: ignoring field(s) Sora does not know: %s.", file, ", ".join(unknown))

    values = {**DEFAULTS[model_type], **{k: raw[k] for k in raw if k in _ARCH_FIELDS}}
    if values.get("num_decoder_layers") is None:
        values["num_decoder_layers"] = values["num_layers"]
    if values.get("decoder_start_token_id") is None:  # T5 starts decoding from the padding token
        values["decoder_start_token_id"] = values["pad_token_id"]
    for field in (*_INT_FIELDS, "pad_token_id", "eos_token_id", "decoder_start_token_id"):
        value, least = values[field], 1 if field in _INT_FIELDS else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            fail(file, field, f"is {value!r}", f"write one integer >= {least}")
    for field in ("dropout_rate", "layer_norm_epsilon"):
        if not isinstance(values[field], (int, float)) or isinstance(values[field], bool):
            fail(file, field, f"is {values[field]!r}", "write a number")
    if not isinstance(values["tie_word_embeddings"], bool):
        fail(file, "tie_word_embeddings", f"is {values['tie_word_embeddings']!r}", "write true or false")
    feed_forward_proj = _mlp_kind(raw, DEFAULTS[model_type], file)
    try:
        return ModelConfig(
            vocab_size=values["vocab_size"], d_model=values["d_model"], num_heads=values["num_heads"],
            d_kv=values["d_kv"], d_ff=values["d_ff"], num_encoder_layers=values["num_layers"],
            num_decoder_layers=values["num_decoder_layers"],
            relative_attention_num_buckets=values["relative_attention_num_buckets"],
            relative_attention_max_distance=values["relative_attention_max_distance"],
            dropout_rate=float(values["dropout_rate"]), feed_forward_proj=feed_forward_proj,
            tie_word_embeddings=values["tie_word_embeddings"],
            layer_norm_epsilon=float(values["layer_norm_epsilon"]), dtype=dtype, param_dtype=param_dtype,
            scan_layers=scan_layers, pad_id=values["pad_token_id"], eos_id=values["eos_token_id"],
            decoder_start_id=values["decoder_start_token_id"],
        )
    except SoraError as e:  # a value HF accepts but Sora's model cannot take: name the file and its field
        message = str(e)
        for sora_name, hf_name in _SORA_TO_HF_NAMES.items():
            message = message.replace(f"ModelConfig.{sora_name} ", f"{hf_name} ")
        raise SoraError(f"{file}: {message.replace('ModelConfig.', '')}") from e


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` fields transformers' T5ForConditionalGeneration needs to rebuild this model."""
    gated = cfg.feed_forward_proj == "gated-gelu"
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "feed_forward_proj": cfg.feed_forward_proj,
        "dense_act_fn": "gelu_new" if gated else "relu",
        "is_gated_act": gated,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
        "initializer_factor": 1.0,
        "use_cache": True,
    }


def generation_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """`generation_config.json`: the special ids `generate` needs (save_pretrained writes this file too)."""
    return {"decoder_start_token_id": cfg.decoder_start_id, "eos_token_id": cfg.eos_id, "pad_token_id": cfg.pad_id}
