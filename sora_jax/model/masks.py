"""Attention masks (padding, causal, packed segments) and decoder inputs built from targets.

Masks are boolean, True where a query may attend to a key, shaped [B or 1, 1, Lq, Lk] so they broadcast over
heads in `jax.nn.dot_product_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def key_padding_mask(tokens_BS: jax.Array, pad_id: int) -> jax.Array:
    """Hides padded keys only -> [B, 1, 1, Lk].

    Queries at padded positions are left free: their outputs are never used, and keeping their rows
    non-empty avoids an all-masked softmax row.
    """
    return (tokens_BS != pad_id)[:, None, None, :]


def segment_mask(q_segment_ids_BL: jax.Array, k_segment_ids_BS: jax.Array) -> jax.Array:
    """Packed rows: a query may only see keys of its own segment -> [B, 1, Lq, Lk]."""
    return q_segment_ids_BL[:, None, :, None] == k_segment_ids_BS[:, None, None, :]


def causal_mask(q_positions_BL: jax.Array, k_positions_BS: jax.Array) -> jax.Array:
    """A query may see keys at the same or earlier (absolute) index -> [B or 1, 1, Lq, Lk]."""
    return k_positions_BS[:, None, None, :] <= q_positions_BL[:, None, :, None]


def cache_slot_positions(last_position: jax.Array, cache_length: int) -> jax.Array:
    """The position whose key each slot of a self-attention cache holds once the keys up to `last_position` are
    written, position p in slot p % cache_length (a buffer shorter than the sequence is written round-robin) ->
    [1, cache_length]; negative for a slot not written yet."""
    slots_1S = jnp.arange(cache_length, dtype=jnp.int32)[None, :]
    return last_position - jnp.mod(last_position - slots_1S, cache_length)


def cached_keys_mask(q_positions_BL: jax.Array, k_positions_BS: jax.Array) -> jax.Array:
    """A query may see the written cache slots (k_positions from `cache_slot_positions`) at or before it."""
    return causal_mask(q_positions_BL, k_positions_BS) & (k_positions_BS >= 0)[:, None, None, :]


def window_mask(q_index_BL: jax.Array, k_index_BS: jax.Array, window: int, bidirectional: bool,
                split: bool = False) -> jax.Array:
    """Sliding-window attention: keys less than `window` indices before the query (and after it when
    bidirectional, as T5Gemma's encoder does) -> [B or 1, 1, Lq, Lk]. Combine with the causal mask for a decoder.
    split (bidirectional only; T5Gemma 2's encoder): `window` keys in all, the query, (window - 1) // 2 before it and
    window // 2 after it."""
    distance_BLS = q_index_BL[:, None, :, None] - k_index_BS[:, None, None, :]
    if split:
        return (distance_BLS < (window + 1) // 2) & (-distance_BLS <= window // 2)
    if bidirectional:
        distance_BLS = jnp.abs(distance_BLS)
    return distance_BLS < window


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """ANDs the masks that are not None (broadcasting); None when all are None."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def shift_right(targets_BL: jax.Array, decoder_start_id: int) -> jax.Array:
    """Teacher-forcing decoder inputs: [start, t0, ..., t_{L-2}] for targets [t0, ..., t_{L-1}]."""
    start_B1 = jnp.full((targets_BL.shape[0], 1), decoder_start_id, targets_BL.dtype)
    return jnp.concatenate([start_B1, targets_BL[:, :-1]], axis=1)


def shift_right_packed(targets_BL: jax.Array, segment_ids_BL: jax.Array, decoder_start_id: int) -> jax.Array:
    """shift_right for packed rows: each segment starts with decoder_start_id and never sees the previous
    segment's last token; padding positions (segment id 0) keep their target token (the pad id)."""
    shifted_BL = shift_right(targets_BL, decoder_start_id)
    shifted_segments_BL = shift_right(segment_ids_BL, 0)
    starts_segment_BL = segment_ids_BL != shifted_segments_BL
    out_BL = jnp.where(starts_segment_BL, jnp.asarray(decoder_start_id, targets_BL.dtype), shifted_BL)
    return jnp.where(segment_ids_BL == 0, targets_BL, out_BL)
