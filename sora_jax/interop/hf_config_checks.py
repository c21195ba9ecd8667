"""Rules shared by the Hugging Face `config.json` readers (T5, T5Gemma, T5Gemma 2): each failure is one SoraError
line naming the file, the field, what is wrong and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from sora_jax.errors import SoraError
from sora_jax.model.config import LAYER_TYPES

# transformers' names of the tanh-approximated GELU, the one Sora's gated MLPs compute.
TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")


def fail(file: Path, field: str, problem: str, fix: str) -> NoReturn:
    """Stop with `<file>: <field> <problem>; <fix>.`"""
    raise SoraError(f"{file}: {field} {problem}; {fix}.")


def check_positive_ints(values: dict[str, Any], fields: tuple[str, ...], file: Path, where: str) -> None:
    """Every field in `fields` holds one integer >= 1 (not a bool)."""
    for field in fields:
        if not isinstance(values[field], int) or isinstance(values[field], bool) or values[field] < 1:
            fail(file, where + field, f"is {values[field]!r}", "write one integer >= 1")


def checked_layer_types(types: Any, layers: int, file: Path, where: str) -> tuple[str, ...]:
    """`layer_types` as a tuple: one entry per layer, each a type Sora implements."""
    if not isinstance(types, list) or len(types) != layers:
        fail(file, where + "layer_types", f"is {types!r}", f"give {layers} entries (num_hidden_layers)")
    unknown_types = [t for t in types if t not in LAYER_TYPES]
    if unknown_types:
        fail(file, where + "layer_types", f"has {unknown_types[0]!r}",
             f"Sora implements {' and '.join(LAYER_TYPES)} layers only")
    return tuple(types)


def check_gemma_lm(raw: dict[str, Any], file: Path, architecture: str) -> None:
    """A T5Gemma-family file describes the whole float encoder-decoder LM `architecture`, without attention
    dropout."""
    architectures = raw.get("architectures")
    if architectures is not None and not (isinstance(architectures, list) and architecture in architectures):
        fail(file, "architectures", f"is {architectures!r}",
             f"Sora imports the full encoder-decoder LM ({architecture})")
    if raw.get("is_encoder_decoder", True) is not True:
        fail(file, "is_encoder_decoder", "is false", "Sora needs the encoder-decoder, not an encoder-only model")
    if raw.get("quantization_config") is not None:
        fail(file, "quantization_config", "is set", "export an unquantised float checkpoint first")
    if raw.get("attention_dropout"):
        fail(file, "attention_dropout", f"is {raw['attention_dropout']!r}",
             "Sora has no dropout on attention probabilities; set it to 0 (dropout_rate is supported)")
