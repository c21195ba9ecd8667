"""Building blocks of the T5 stack: RMS norm, token embedding, feed-forward MLP, relative position bias."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.model.config import ModelConfig

ACT_BLD = ("batch", "length", "embed")
ACT_BLF = ("batch", "length", "mlp")
ACT_BLV = ("batch", "length", "vocab")


def param_with_axes(init: nn.initializers.Initializer, axes: tuple[str, ...]) -> nn.initializers.Initializer:
    """Wraps an initializer so the parameter carries logical axis names (for sharding rules)."""
    return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no bias and no mean subtraction; statistics in float32. T5Gemma stores the scale
    as an offset from 1 (multiplies by 1 + w, w initialised to 0), as Gemma does. Normalises the last axis, whose
    logical name is `axis` (T5Gemma 2's QK-norm normalises each head's "kv" features)."""

    config: ModelConfig
    axis: str = "embed"

    @nn.compact
    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.initializers.zeros if cfg.is_t5gemma else nn.initializers.ones
        scale_D = self.param("scale", param_with_axes(init, (self.axis,)), (x_BLD.shape[-1],), cfg.params_dtype)
        if cfg.is_t5gemma:
            scale_D = 1.0 + jnp.asarray(scale_D, jnp.float32)
        # bfloat16 has too few mantissa bits for a stable mean of squares, so normalise in float32.
        x_f32 = x_BLD.astype(jnp.float32)
        variance_BL1 = jnp.mean(jnp.square(x_f32), axis=-1, keepdims=True)
        y_BLD = x_f32 * jax.lax.rsqrt(variance_BL1 + cfg.layer_norm_epsilon)
        y_BLD = y_BLD * jnp.asarray(scale_D, jnp.float32)
        return y_BLD.astype(cfg.compute_dtype)


class Embed(nn.Module):
    """Token embedding (T5: shared by encoder and decoder; T5Gemma: one per stack); `attend` reuses the table as a
    tied LM head. T5Gemma multiplies the looked-up rows by sqrt(width). T5Gemma 2 also has an `eoi_embedding` row
    that replaces (unscaled) the embedding of the end-of-image token `eoi_id`, as transformers does."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        # T5Gemma scales rows up by sqrt(D), so a D**-0.5 init gives unit-variance inputs as T5's 1.0 init does.
        stddev = cfg.d_model**-0.5 if cfg.is_t5gemma else 1.0
        self.embedding = self.param(
            "embedding",
            param_with_axes(nn.initializers.normal(stddev=stddev), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            cfg.params_dtype,
        )
        if cfg.is_t5gemma2:
            self.eoi_embedding = self.param("eoi_embedding", param_with_axes(nn.initializers.zeros, ("embed",)),
                                            (cfg.d_model,), cfg.params_dtype)

    def __call__(self, tokens_BL: jax.Array) -> jax.Array:
        """Looks up token ids [B, L] -> embeddings [B, L, D] in the compute dtype."""
        dtype = self.config.compute_dtype
        table_VD = jnp.asarray(self.embedding, dtype)
        x_BLD = jnp.take(table_VD, tokens_BL.astype(jnp.int32), axis=0)
        if self.config.is_t5gemma:
            # The normaliser is rounded to the compute dtype first, as Gemma does (sqrt(2304) is 48 in bfloat16).
            x_BLD = x_BLD * jnp.asarray(self.config.d_model**0.5, dtype)
        if self.config.is_t5gemma2 and self.config.eoi_id >= 0:
            is_eoi_BL1 = (tokens_BL == self.config.eoi_id)[..., None]
            x_BLD = jnp.where(is_eoi_BL1, jnp.asarray(self.eoi_embedding, dtype), x_BLD)
        return nn.with_logical_constraint(x_BLD, ACT_BLD)

    def attend(self, y_BLD: jax.Array) -> jax.Array:
        """Scores y [B, L, D] against every embedding row -> float32 logits [B, L, V]."""
        dtype = self.config.compute_dtype
        # Accumulate in float32 so bfloat16 compute still yields float32 logits without a lossy bf16 rounding.
        logits_BLV = jnp.einsum(
            "bld,vd->blv", y_BLD.astype(dtype), jnp.asarray(self.embedding, dtype),
            preferred_element_type=jnp.float32,
        )
        return nn.with_logical_constraint(logits_BLV, ACT_BLV)


class MLP(nn.Module):
    """Position-wise feed-forward block: ReLU (wi, wo) or T5 v1.1 gated GELU (wi_0, wi_1, wo)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BLD: jax.Array, *, deterministic: bool) -> jax.Array:
        cfg = self.config

        def dense(features: int, axes: tuple[str, str], stddev: float, name: str) -> nn.Module:
            return nn.DenseGeneral(
                features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                kernel_init=param_with_axes(nn.initializers.normal(stddev=stddev), axes), name=name,
            )

        wi_std = cfg.d_model**-0.5
        if cfg.feed_forward_proj == "gated-gelu":
            gate_BLF = dense(cfg.d_ff, ("embed", "mlp"), wi_std, "wi_0")(x_BLD)
            linear_BLF = dense(cfg.d_ff, ("embed", "mlp"), wi_std, "wi_1")(x_BLD)
            # T5 v1.1 uses the tanh approximation of GELU ("gelu_new").
            h_BLF = nn.gelu(gate_BLF, approximate=True) * linear_BLF
        else:
            h_BLF = nn.relu(dense(cfg.d_ff, ("embed", "mlp"), wi_std, "wi")(x_BLD))
        h_BLF = nn.with_logical_constraint(h_BLF, ACT_BLF)
        h_BLF = nn.Dropout(cfg.dropout_rate)(h_BLF, deterministic=deterministic)
        y_BLD = dense(cfg.d_model, ("mlp", "embed"), cfg.d_ff**-0.5, "wo")(h_BLF)
        return nn.with_logical_constraint(y_BLD, ACT_BLD)


def rope_sin_cos(positions_BL: jax.Array, head_dim: int, theta: float,
                 linear_factor: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Rotary embedding angles of positions [B or 1, L] -> (sin, cos) [B or 1, L, head_dim // 2] in float32.
    linear_factor (linear RoPE scaling, 0 = none) divides the frequencies, as transformers' "linear" type does."""
    inv_freq_K = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if linear_factor:
        inv_freq_K = inv_freq_K / linear_factor
    angles_BLK = positions_BL.astype(jnp.float32)[..., None] * inv_freq_K
    return jnp.sin(angles_BLK), jnp.cos(angles_BLK)


def apply_rope(x_BLHK: jax.Array, sin_BLK: jax.Array, cos_BLK: jax.Array) -> jax.Array:
    """Rotates the two halves of each head's features (the "rotate_half" layout of Gemma and Hugging Face)."""
    half = x_BLHK.shape[-1] // 2
    x1, x2 = x_BLHK[..., :half], x_BLHK[..., half:]
    sin, cos = sin_BLK[:, :, None, :].astype(x_BLHK.dtype), cos_BLK[:, :, None, :].astype(x_BLHK.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap): keeps logits within (-cap, cap) (Gemma 2); identity when cap is 0."""
    return cap * jnp.tanh(x / cap) if cap else x


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Maps key_position - query_position to a T5 bucket id in [0, num_buckets).

    Small distances get one bucket each; larger ones share log-spaced buckets up to max_distance, beyond
    which everything falls in the last bucket. Bidirectional (encoder) uses half the buckets for keys after
    the query; unidirectional (decoder) maps every key after the query to bucket 0.
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # float32 log, then truncation, as in the reference T5 code, so imported checkpoints see the same buckets;
    # max(distance, 1) only keeps log(0) out of the branch that `where` discards.
    safe_distance = jnp.maximum(distance, 1).astype(jnp.float32)
    log_ratio = jnp.log(safe_distance / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned per-head additive attention bias indexed by bucketed relative position (T5)."""

    config: ModelConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions_BL: jax.Array, k_positions_BL: jax.Array) -> jax.Array:
        """Positions [1 or B, Lq] and [1 or B, Lk] -> float32 bias [1 or B, H, Lq, Lk].

        Passing absolute positions (rather than lengths) covers packed rows and decoding, where the query
        sits at an offset (the cache index) into the key range.
        """
        cfg = self.config
        table_NH = self.param(
            "embedding",
            param_with_axes(nn.initializers.normal(stddev=cfg.d_model**-0.5), ("relpos_buckets", "heads")),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            cfg.params_dtype,
        )
        relative_BLL = k_positions_BL[:, None, :] - q_positions_BL[:, :, None]
        bucket_BLL = relative_position_bucket(
            relative_BLL, self.bidirectional, cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        # Bias is added to float32 attention logits, so keep it in float32 regardless of compute dtype. Gathered
        # heads-first: with heads as the minor axis the TPU pads them to 128 lanes (10x the bytes for 12 heads).
        values_HBLL = jnp.take(jnp.asarray(table_NH, jnp.float32).T, bucket_BLL, axis=1)
        return jnp.transpose(values_HBLL, (1, 0, 2, 3))


class LMHead(nn.Module):
    """Untied output projection [D] -> [V] ("logits_dense" in the param tree), float32 logits."""

    config: ModelConfig

    @nn.compact
    def __call__(self, y_BLD: jax.Array) -> jax.Array:
        cfg = self.config
        kernel_DV = self.param(
            "kernel",
            param_with_axes(nn.initializers.normal(stddev=cfg.d_model**-0.5), ("embed", "vocab")),
            (cfg.d_model, cfg.vocab_size),
            cfg.params_dtype,
        )
        dtype = cfg.compute_dtype
        logits_BLV = jnp.einsum(
            "bld,dv->blv", y_BLD.astype(dtype), jnp.asarray(kernel_DV, dtype),
            preferred_element_type=jnp.float32,
        )
        return nn.with_logical_constraint(logits_BLV, ACT_BLV)
