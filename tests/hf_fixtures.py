"""Reading the committed Hugging Face fixtures (tests/fixtures/hf_*/<variant>/: config.json, safetensors,
expected.npz with transformers' logits and greedy tokens), shared by the T5, T5Gemma and T5Gemma 2 parity tests."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from sora_jax.interop import load_hf_t5
from sora_jax.model import EncoderDecoder, ModelConfig

FAST_COMPILE = {"xla_backend_optimization_level": 0}  # Tiny models: compile time dominates, not run time.


@functools.cache
def expected(fixtures: Path, variant: str) -> dict[str, np.ndarray]:
    """transformers' reference outputs of one fixture."""
    with np.load(fixtures / variant / "expected.npz") as data:
        return dict(data)


@functools.cache
def imported(fixtures: Path, variant: str, scan_layers: bool = False):
    """(ModelConfig, params, tokenizer) of one fixture, loaded once per session."""
    return load_hf_t5(fixtures / variant, scan_layers=scan_layers)


@functools.cache
def forward(cfg: ModelConfig):
    """The jitted teacher-forced forward pass of a model config: (params, encoder ids, decoder ids) -> logits."""
    model = EncoderDecoder(cfg)
    return jax.jit(lambda p, enc, dec: model.apply({"params": p}, enc, dec), compiler_options=FAST_COMPILE)


def rel_diff(logits: np.ndarray, ref: dict[str, np.ndarray]) -> float:
    """max |sora - hf| / max |hf| over the decoder positions transformers does not mask."""
    valid = ref["decoder_attention_mask"].astype(bool)  # transformers masks decoder padding; Sora needs not
    return float(np.abs(logits - ref["logits"])[valid].max() / np.abs(ref["logits"])[valid].max())


def flat(tree) -> dict[tuple[str, ...], np.ndarray]:
    """A param tree as {path: numpy array}."""
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}
