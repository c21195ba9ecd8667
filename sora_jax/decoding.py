"""Autoregressive decoding with the model's key/value cache, inside one compiled `lax.while_loop`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sora_jax.model import EncoderDecoder


def init_decode_cache(model: EncoderDecoder, params: Any, encoded_BSD: jax.Array, encoder_tokens_BS: jax.Array,
                      max_length: int) -> Any:
    """Create the decoder cache: self-attention buffers of `max_length`, encoder keys/values projected once."""
    start_B1 = jnp.full((encoder_tokens_BS.shape[0], 1), model.config.decoder_start_id, jnp.int32)
    _, variables = model.apply({"params": params}, encoded_BSD, encoder_tokens_BS, start_B1, decode=True,
                               max_decode_length=max_length, method=model.decode, mutable=["cache"])
    return variables["cache"]


def greedy_decode(params: Any, encoder_tokens_BS: jax.Array, *, model: EncoderDecoder,
                  max_length: int) -> jax.Array:
    """Most likely next token at each step, until every row has produced EOS or `max_length` tokens.

    Returns int32 [B, max_length]: the generated ids, EOS included, padding after it.
    """
    cfg = model.config
    batch = encoder_tokens_BS.shape[0]
    encoded_BSD = model.apply({"params": params}, encoder_tokens_BS, method=model.encode)
    cache = init_decode_cache(model, params, encoded_BSD, encoder_tokens_BS, max_length)

    def keep_going(carry: tuple) -> jax.Array:
        index, _, _, done_B, _ = carry
        return (index < max_length) & ~jnp.all(done_B)

    def step(carry: tuple) -> tuple:
        index, token_B1, out_BL, done_B, cache = carry
        logits_B1V, variables = model.apply({"params": params, "cache": cache}, encoded_BSD, encoder_tokens_BS,
                                            token_B1, decode=True, method=model.decode, mutable=["cache"])
        next_B = jnp.argmax(logits_B1V[:, -1], axis=-1).astype(jnp.int32)
        next_B = jnp.where(done_B, cfg.pad_id, next_B)
        out_BL = jax.lax.dynamic_update_slice(out_BL, next_B[:, None], (0, index))
        return index + 1, next_B[:, None], out_BL, done_B | (next_B == cfg.eos_id), variables["cache"]

    start_B1 = jnp.full((batch, 1), cfg.decoder_start_id, jnp.int32)
    init = (jnp.zeros((), jnp.int32), start_B1, jnp.zeros((batch, max_length), jnp.int32),
            jnp.zeros((batch,), bool), cache)
    return jax.lax.while_loop(keep_going, step, init)[2]
