"""The one place that tells Hugging Face checkpoint architectures apart: config.json's `model_type` on import,
ModelConfig.family on export. Everything architecture-specific (config fields, tensor names, tokenizer file) hangs
off the Format picked here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sora_jax.errors import SoraError
from sora_jax.interop import (
    hf_t5_config,
    hf_t5_layout,
    hf_t5gemma2_config,
    hf_t5gemma2_layout,
    hf_t5gemma_config,
    hf_t5gemma_layout,
)
from sora_jax.interop.hf_t5_layout import TensorSpec
from sora_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Format:
    """How one architecture's checkpoint directory is read and written."""

    family: str  # ModelConfig.family
    config_from_hf: Callable[..., ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    generation_config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    tensor_specs: Callable[[ModelConfig], list[TensorSpec]]
    optional_tensors: Callable[[ModelConfig], dict[str, tuple[int, ...]]]
    embed: str  # the embedding a tied head equals
    embed_copies: tuple[str, ...]  # stored copies of `embed` accepted in its place
    lm_head: str
    tokenizer_file: str  # the sentencepiece model transformers' tokenizer saves
    t5_sentinels: bool  # whether the vocabulary ends with T5's <extra_id_N> (added after the pieces)
    # Stored tensors outside Sora's model (T5Gemma 2's vision tower): skipped on import.
    skipped_prefixes: tuple[str, ...] = ()
    # Stored copies of tied tensors -> the tensor each must equal (default: a tied head equals `embed`).
    tied_copies: Callable[[ModelConfig], dict[str, str]] | None = None
    # Tensors an export adds so that transformers builds the whole model (T5Gemma 2's placeholder vision tower).
    export_extras: Callable[[ModelConfig], dict[str, np.ndarray]] | None = None
    # (stored prefix, this format's prefix): other spellings transformers also loads.
    renamed_prefixes: tuple[tuple[str, str], ...] = ()

    def canonical_name(self, stored_name: str) -> str:
        """The name tensor_specs uses for a tensor stored as `stored_name`."""
        for old, new in self.renamed_prefixes:
            if stored_name.startswith(old):
                return new + stored_name[len(old):]
        return stored_name

    def copies(self, cfg: ModelConfig) -> dict[str, str]:
        """Stored tied copies -> the tensor each must equal."""
        if self.tied_copies is not None:
            return self.tied_copies(cfg)
        return {self.lm_head: self.embed} if cfg.tie_word_embeddings else {}

    def extra_ids(self, num_pieces: int, model_vocab_size: int) -> int:
        """Sentinel ids after the sentencepiece pieces: T5's 100, as many as the embedding holds (tiny test
        checkpoints may hold fewer); none for Gemma's tokenizer, whose pieces are the whole vocabulary."""
        return max(0, min(100, model_vocab_size - num_pieces)) if self.t5_sentinels else 0


T5 = Format("t5", hf_t5_config.config_from_hf, hf_t5_config.config_to_hf, hf_t5_config.generation_config_to_hf,
            hf_t5_layout.tensor_specs, hf_t5_layout.optional_tensors, hf_t5_layout.SHARED, hf_t5_layout.EMBED_COPIES,
            hf_t5_layout.LM_HEAD, "spiece.model", True)
T5GEMMA = Format("t5gemma", hf_t5gemma_config.config_from_hf, hf_t5gemma_config.config_to_hf,
                 hf_t5gemma_config.generation_config_to_hf, hf_t5gemma_layout.tensor_specs,
                 hf_t5gemma_layout.optional_tensors, hf_t5gemma_layout.DECODER_EMBED, (), hf_t5gemma_layout.LM_HEAD,
                 "tokenizer.model", False)
T5GEMMA2 = Format("t5gemma2", hf_t5gemma2_config.config_from_hf, hf_t5gemma2_config.config_to_hf,
                  hf_t5gemma2_config.generation_config_to_hf, hf_t5gemma2_layout.tensor_specs,
                  hf_t5gemma2_layout.optional_tensors, hf_t5gemma2_layout.ENCODER_EMBED, (),
                  hf_t5gemma2_layout.LM_HEAD, "tokenizer.model", False, hf_t5gemma2_layout.VISION_PREFIXES,
                  hf_t5gemma2_layout.tied_copies, hf_t5gemma2_layout.placeholder_tensors,
                  hf_t5gemma2_layout.RENAMED_PREFIXES)
_BY_MODEL_TYPE = {**dict.fromkeys(hf_t5_config.MODEL_TYPES, T5), hf_t5gemma_config.MODEL_TYPE: T5GEMMA,
                  hf_t5gemma2_config.MODEL_TYPE: T5GEMMA2}
_BY_FAMILY = {f.family: f for f in (T5, T5GEMMA, T5GEMMA2)}


def for_config_json(raw: Any, file: Path) -> Format:
    """The format of a parsed config.json; another architecture is a SoraError naming its model_type."""
    if not isinstance(raw, dict):
        raise SoraError(f"{file} holds a JSON {type(raw).__name__}, not an object; point to the config.json "
                        "that transformers' save_pretrained wrote.")
    model_type = raw.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        raise SoraError(f"{file}: model_type is {model_type!r}; Sora imports T5-family and T5Gemma encoder-decoders "
                        f"(model_type {', '.join(_BY_MODEL_TYPE)}).")
    return _BY_MODEL_TYPE[model_type]


def for_model(cfg: ModelConfig) -> Format:
    """The format a model of this config is exported in."""
    return _BY_FAMILY[cfg.family]


def config_from_hf(raw: Any, file: Path, **options: Any) -> ModelConfig:
    """ModelConfig of a parsed config.json of any supported architecture (options: dtype, param_dtype,
    scan_layers)."""
    return for_config_json(raw, file).config_from_hf(raw, file, **options)
