"""Multi-head attention with a KV cache: T5's convention (no biases, no 1/sqrt(d_kv) scaling, relative position
bias), T5Gemma's (RoPE, grouped-query heads, query_pre_attn_scalar**-0.5 scaling, optional logit soft-capping) or
T5Gemma 2's (T5Gemma's with queries and keys RMS-normalised per head, and the decoder's merged attention: one
softmax over its own keys and the encoder's)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.model.config import ModelConfig
from sora_jax.model.layers import ACT_BLD, RMSNorm, apply_rope, param_with_axes, soft_cap

ACT_BLHK = ("batch", "length", "heads", "kv")
ACT_BLGK = ("batch", "length", "kv_heads", "kv")


def softcapped_attention(q_BLHK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array, mask_B1LS: jax.Array | None,
                         scale: float, cap: float) -> jax.Array:
    """Attention whose logits pass through cap * tanh(logits / cap) before masking (Gemma 2), which
    jax.nn.dot_product_attention cannot express. G key/value heads serve H // G query heads each (head h reads
    key head h // (H // G), as dot_product_attention and Hugging Face's repeat_kv group them). Softmax in float32."""
    batch, length, heads, head_dim = q_BLHK.shape
    groups = k_BSGK.shape[2]
    q_BLGRK = q_BLHK.reshape(batch, length, groups, heads // groups, head_dim)
    logits_BGRLS = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRK, k_BSGK, preferred_element_type=jnp.float32)
    logits_BGRLS = soft_cap(logits_BGRLS * scale, cap)
    if mask_B1LS is not None:
        big_negative = jnp.finfo(jnp.float32).min
        logits_BGRLS = jnp.where(mask_B1LS[:, :, None], logits_BGRLS, big_negative)
    probs_BGRLS = jax.nn.softmax(logits_BGRLS, axis=-1).astype(v_BSGK.dtype)
    out_BLGRK = jnp.einsum("bgrls,bsgk->blgrk", probs_BGRLS, v_BSGK)
    return out_BLGRK.reshape(batch, length, heads, head_dim)


class HeadProjection(nn.Module):
    """A bias-free projection whose kernel is created in its final multi-axis shape.

    (flax's DenseGeneral initializes a flattened kernel and reshapes it, which breaks logical-axis
    constraints on the initializer under an active mesh.)
    """

    features: tuple[int, ...] | int
    axis: int | tuple[int, ...]
    axes: tuple[str, ...]
    stddev: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = self.features if isinstance(self.features, tuple) else (self.features,)
        contract = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        contract = tuple(a % x.ndim for a in contract)
        shape = tuple(x.shape[a] for a in contract) + features
        kernel = self.param("kernel", param_with_axes(nn.initializers.normal(stddev=self.stddev), self.axes),
                            shape, self.param_dtype)
        kernel_dims = tuple(range(len(contract)))
        return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                   ((contract, kernel_dims), ((), ())))


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention over projected heads, computed by `jax.nn.dot_product_attention`.

    Decoding (decode=True) keeps its state in the "cache" collection:
      * self-attention: `cached_key` / `cached_value` [B, cache_length, H, K]. The first decode call (no
        cache yet) only creates zeroed buffers and attends normally over its own input. Every later call
        writes its Lq new keys/values at `decode_index` modulo cache_length (a sliding layer's buffer holds only
        its window, written round-robin) and attends over the whole buffer; the caller's mask must hide the
        slots not written yet and those after the current position (`masks.cache_slot_positions`).
      * cross-attention: the encoder's keys/values are projected once on the first decode call and reused
        by every later step, so steps never re-project the encoder output.
      * merged (T5Gemma 2's decoder): both; the encoder's keys/values are `cached_cross_key` / `cached_cross_value`.

    merged: self-attention whose keys/values are followed by the encoder's (`cross_BSD`, projected by the same k/v
    kernels and key norm, without RoPE), all under one softmax; `cross_mask_B1LS` masks the encoder's part.
    """

    config: ModelConfig
    is_cross_attention: bool = False
    merged: bool = False

    def _projection(self, features: tuple[int, ...] | int, axis: int | tuple[int, ...],
                    axes: tuple[str, ...], stddev: float, name: str) -> nn.Module:
        cfg = self.config
        return HeadProjection(features, axis, axes, stddev, cfg.compute_dtype, cfg.params_dtype, name=name)

    @nn.compact
    def __call__(
        self,
        x_BLD: jax.Array,
        kv_BSD: jax.Array,
        *,
        mask_B1LS: jax.Array | None = None,
        bias_BHLS: jax.Array | None = None,
        rope_sin_cos: tuple[jax.Array, jax.Array] | None = None,
        deterministic: bool = True,
        decode: bool = False,
        decode_index: jax.Array | None = None,
        cache_length: int | None = None,
        cross_BSD: jax.Array | None = None,
        cross_mask_B1LS: jax.Array | None = None,
    ) -> jax.Array:
        """Attends queries from x [B, L, D] to keys/values from kv [B, S, D] -> [B, L, D].

        mask: boolean, True = may attend, broadcastable to [B, 1, L, S]. bias: additive, [1 or B, H, L, S].
        rope_sin_cos: (sin, cos) [1 or B, L, K // 2] of the query positions (self-attention; keys share them).
        decode_index: scalar int, where this call's keys go in the self-attention cache.
        cache_length: self-attention cache size when the cache is created (defaults to L).
        """
        cfg = self.config
        heads_kv = (cfg.num_heads, cfg.d_kv)
        # Grouped keys/values get their own logical axis: fewer heads may not divide the mesh axis "heads" uses.
        grouped = cfg.kv_heads != cfg.num_heads
        kv_shape, kv_axes = (cfg.kv_heads, cfg.d_kv), ("kv_heads" if grouped else "heads", "kv")
        act_kv = ACT_BLGK if grouped else ACT_BLHK
        dtype = cfg.compute_dtype
        # T5 init: the query absorbs the missing 1/sqrt(d_kv) logit scaling through a smaller init. T5Gemma scales
        # logits by query_pre_attn_scalar**-0.5 instead, so its query gets the plain fan-in init.
        q_std = cfg.d_model**-0.5 if cfg.is_t5gemma else (cfg.d_model * cfg.d_kv) ** -0.5
        q_BLHK = self._projection(heads_kv, -1, ("embed", "heads", "kv"), q_std, "q")(x_BLD)
        # T5Gemma 2 normalises each head's query and key before RoPE (Gemma 3's QK-norm).
        qk_norm = cfg.is_t5gemma2
        if qk_norm:
            q_BLHK = RMSNorm(cfg, axis="kv", name="q_norm")(q_BLHK)
        if rope_sin_cos is not None:
            q_BLHK = apply_rope(q_BLHK, *rope_sin_cos)
        q_BLHK = nn.with_logical_constraint(q_BLHK, ACT_BLHK)
        kv_std = kv_BSD.shape[-1] ** -0.5
        k_proj = self._projection(kv_shape, -1, ("embed", *kv_axes), kv_std, "k")
        v_proj = self._projection(kv_shape, -1, ("embed", *kv_axes), kv_std, "v")
        k_norm = RMSNorm(cfg, axis="kv", name="k_norm") if qk_norm else None

        def project_kv(source_BSD: jax.Array, rope: tuple[jax.Array, jax.Array] | None = rope_sin_cos,
                       ) -> tuple[jax.Array, jax.Array]:
            k_BSHK, v_BSHK = k_proj(source_BSD), v_proj(source_BSD)
            if k_norm is not None:
                k_BSHK = k_norm(k_BSHK)
            if rope is not None:
                k_BSHK = apply_rope(k_BSHK, *rope)
            return (nn.with_logical_constraint(k_BSHK, act_kv),
                    nn.with_logical_constraint(v_BSHK, act_kv))

        if decode and self.is_cross_attention:
            cache_ready = self.has_variable("cache", "cached_key")
            if cache_ready:
                k_BSHK = self.get_variable("cache", "cached_key")
                v_BSHK = self.get_variable("cache", "cached_value")
            else:
                k_BSHK, v_BSHK = project_kv(kv_BSD)
                self.put_variable("cache", "cached_key", k_BSHK.astype(dtype))
                self.put_variable("cache", "cached_value", v_BSHK.astype(dtype))
        elif decode:
            cache_ready = self.has_variable("cache", "cached_key")
            k_BSHK, v_BSHK = project_kv(kv_BSD)
            batch, length = x_BLD.shape[:2]
            shape = (batch, cache_length or length, *kv_shape)
            cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, dtype)
            if cache_ready:
                if decode_index is None:
                    raise ValueError("decode_index is required for a cached self-attention step.")
                # A buffer shorter than the sequence (a sliding layer's window) is written round-robin.
                start = (0, jnp.mod(decode_index, cached_key.value.shape[1]), 0, 0)
                cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k_BSHK.astype(dtype), start)
                cached_value.value = jax.lax.dynamic_update_slice(
                    cached_value.value, v_BSHK.astype(dtype), start
                )
                k_BSHK, v_BSHK = cached_key.value, cached_value.value
        else:
            k_BSHK, v_BSHK = project_kv(kv_BSD)

        batch, length = x_BLD.shape[0], q_BLHK.shape[1]
        if self.merged:
            if cross_BSD is None:
                raise ValueError("merged attention needs cross_BSD (the encoder output).")
            if decode and self.has_variable("cache", "cached_cross_key"):
                cross_k_BSHK = self.get_variable("cache", "cached_cross_key")
                cross_v_BSHK = self.get_variable("cache", "cached_cross_value")
            else:
                cross_k_BSHK, cross_v_BSHK = project_kv(cross_BSD, rope=None)
                if decode:
                    self.put_variable("cache", "cached_cross_key", cross_k_BSHK.astype(dtype))
                    self.put_variable("cache", "cached_cross_value", cross_v_BSHK.astype(dtype))
            # One key axis: the decoder's own keys, then the encoder's; each part keeps its own mask (None: all).
            mask_B1LS = jnp.concatenate([
                jnp.broadcast_to(True if mask is None else mask, (batch, 1, length, keys.shape[1]))
                for mask, keys in ((mask_B1LS, k_BSHK), (cross_mask_B1LS, cross_k_BSHK))], axis=-1)
            k_BSHK = jnp.concatenate([k_BSHK.astype(dtype), cross_k_BSHK.astype(dtype)], axis=1)
            v_BSHK = jnp.concatenate([v_BSHK.astype(dtype), cross_v_BSHK.astype(dtype)], axis=1)
        elif mask_B1LS is not None:
            mask_B1LS = jnp.broadcast_to(mask_B1LS, (batch, 1, length, k_BSHK.shape[1]))
        # scale=1.0: T5 folds the 1/sqrt(d_kv) into the query init instead of scaling logits.
        scale = (cfg.query_pre_attn_scalar or cfg.d_kv) ** -0.5 if cfg.is_t5gemma else 1.0
        if cfg.attn_logit_softcapping:
            out_BLHK = softcapped_attention(q_BLHK.astype(dtype), k_BSHK.astype(dtype), v_BSHK.astype(dtype),
                                            mask_B1LS, scale, cfg.attn_logit_softcapping)
        else:
            out_BLHK = jax.nn.dot_product_attention(
                q_BLHK.astype(dtype), k_BSHK.astype(dtype), v_BSHK.astype(dtype),
                bias=bias_BHLS, mask=mask_B1LS, scale=scale,
            )
        out_BLHK = nn.with_logical_constraint(out_BLHK, ACT_BLHK)
        # dot_product_attention has no dropout on the probabilities. Dropping the per-head context instead
        # is the nearest substitute (it perturbs each head's mixture of values), and placing it before the
        # output projection avoids stacking a second mask on the residual dropout the layer applies after.
        out_BLHK = nn.Dropout(cfg.dropout_rate)(out_BLHK, deterministic=deterministic)
        y_BLD = self._projection(cfg.d_model, (-2, -1), ("heads", "kv", "embed"),
                                 (cfg.num_heads * cfg.d_kv) ** -0.5, "o")(out_BLHK)
        return nn.with_logical_constraint(y_BLD, ACT_BLD)
