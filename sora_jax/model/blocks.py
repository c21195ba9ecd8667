"""The layers of both stacks and how a stack runs them (scanned or unrolled, rematerialised or not).

Each layer picks its attention mask and RoPE angles by layer type (a sliding-window layer or a global one): a Python
bool when unrolled, a row of the scanned per-layer flags when scanned.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.model.attention import MultiHeadAttention
from sora_jax.model.config import ModelConfig
from sora_jax.model.layers import ACT_BLD, MLP, RMSNorm

Masks = tuple[jax.Array | None, jax.Array | None]  # (every layer's mask, a sliding layer's mask or None)
Rope = tuple[jax.Array, jax.Array] | None
# (a global layer's RoPE (sin, cos), a sliding layer's when it differs (T5Gemma 2) or None); (None, None) for T5.
Ropes = tuple[Rope, Rope]


def _by_layer_type(sliding: Any, full: Any, window: Any) -> Any:
    """`window` for a sliding layer, else `full` (either may be a pytree of arrays): `sliding` is None (no windows), a
    Python bool (unrolled layers) or a traced bool (the scanned layer's row of the per-layer flags). A None `window`
    means every layer uses `full`."""
    if sliding is None or sliding is False or window is None:
        return full
    if sliding is True:
        return window
    return jax.tree.map(lambda w, f: jnp.where(sliding, w, f), window, full)


def _sublayer(cfg: ModelConfig, name: str, h_BLD: jax.Array) -> jax.Array:
    """T5Gemma normalises each sublayer's output before the residual add (Gemma 2's post-norms); T5 does not."""
    return RMSNorm(cfg, name=f"{name}_post_norm")(h_BLD) if cfg.is_t5gemma else h_BLD


class EncoderLayer(nn.Module):
    """x + drop(self_attn(norm(x))), then x + drop(mlp(norm(x)))."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: jax.Array, sliding: Any, masks_: Masks, bias_BHLL: jax.Array | None,
                 ropes: Ropes) -> tuple[jax.Array, None]:
        """Returns (x, None): the (carry, output) pair nn.scan expects, also used unscanned for one shape."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h_BLD = RMSNorm(cfg, name="self_attention_norm")(x_BLD)
        h_BLD = MultiHeadAttention(cfg, name="self_attention")(
            h_BLD, h_BLD, mask_B1LS=_by_layer_type(sliding, *masks_), bias_BHLS=bias_BHLL,
            rope_sin_cos=_by_layer_type(sliding, *ropes), deterministic=self.deterministic
        )
        x_BLD = x_BLD + drop(_sublayer(cfg, "self_attention", h_BLD), deterministic=self.deterministic)
        h_BLD = MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x_BLD), deterministic=self.deterministic)
        x_BLD = x_BLD + drop(_sublayer(cfg, "mlp", h_BLD), deterministic=self.deterministic)
        return nn.with_logical_constraint(x_BLD, ACT_BLD), None


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then the MLP; each pre-norm. T5Gemma 2 merges
    the first two: one attention over the decoder's keys and the encoder's (MultiHeadAttention.merged)."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False
    cache_lengths: tuple[int, int] | None = None  # Self-attention buffers to create: (global layer's, sliding's).

    @nn.compact
    def __call__(self, x_BLD: jax.Array, sliding: Any, encoded_BSD: jax.Array, self_masks: Masks,
                 self_bias_BHLL: jax.Array | None, ropes: Ropes, cross_mask_B1LS: jax.Array | None,
                 decode_index: jax.Array | None) -> tuple[jax.Array, None]:
        """Returns (x, None) like EncoderLayer."""
        cfg = self.config
        det = self.deterministic
        drop = nn.Dropout(cfg.dropout_rate)
        merged = cfg.is_t5gemma2
        # A traced `sliding` (a scanned mix of layer types) comes with equal lengths: scanned buffers share a shape.
        cache_length = self.cache_lengths[1 if sliding is True else 0] if self.cache_lengths else None
        h_BLD = RMSNorm(cfg, name="self_attention_norm")(x_BLD)
        h_BLD = MultiHeadAttention(cfg, merged=merged, name="self_attention")(
            h_BLD, h_BLD, mask_B1LS=_by_layer_type(sliding, *self_masks), bias_BHLS=self_bias_BHLL,
            rope_sin_cos=_by_layer_type(sliding, *ropes), deterministic=det, decode=self.decode,
            decode_index=decode_index, cache_length=cache_length,
            cross_BSD=encoded_BSD if merged else None, cross_mask_B1LS=cross_mask_B1LS if merged else None,
        )
        x_BLD = x_BLD + drop(_sublayer(cfg, "self_attention", h_BLD), deterministic=det)
        if not merged:
            h_BLD = RMSNorm(cfg, name="cross_attention_norm")(x_BLD)
            h_BLD = MultiHeadAttention(cfg, is_cross_attention=True, name="cross_attention")(
                h_BLD, encoded_BSD, mask_B1LS=cross_mask_B1LS, deterministic=det, decode=self.decode
            )
            x_BLD = x_BLD + drop(_sublayer(cfg, "cross_attention", h_BLD), deterministic=det)
        h_BLD = MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x_BLD), deterministic=det)
        x_BLD = x_BLD + drop(_sublayer(cfg, "mlp", h_BLD), deterministic=det)
        return nn.with_logical_constraint(x_BLD, ACT_BLD), None


def run_layers(parent: nn.Module, layer_cls: type[nn.Module], sliding_layers: tuple[bool, ...],
               layer_attrs: dict[str, Any], x_BLD: jax.Array, *args: Any) -> jax.Array:
    """Applies one layer_cls per entry of sliding_layers (whether that layer attends within a window), scanned (one
    traced body; a mixed pattern becomes a scanned flag) or unrolled, with optional remat. `parent` is the stack."""
    cfg: ModelConfig = parent.config
    num_layers = len(sliding_layers)
    mixed = len(set(sliding_layers)) > 1
    cls = layer_cls
    if cfg.remat_policy != "none":
        # Under scan, CSE across iterations cannot happen, so prevent_cse would only block optimisations.
        cls = nn.remat(cls, policy=cfg.remat_fn_policy, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        cls = nn.scan(
            cls,
            # Cache leaves stack on axis 1 so every cache array keeps batch first (beam search can gather
            # along axis 0 without knowing whether layers are scanned).
            variable_axes={"params": 0, "cache": 1},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0 if mixed else nn.broadcast,) + (nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        sliding = jnp.asarray(sliding_layers) if mixed else sliding_layers[0]
        x_BLD, _ = cls(cfg, **layer_attrs, parent=parent, name="layers")(x_BLD, sliding, *args)
        return x_BLD
    for i in range(num_layers):
        x_BLD, _ = cls(cfg, **layer_attrs, parent=parent, name=f"layers_{i}")(x_BLD, sliding_layers[i], *args)
    return x_BLD
