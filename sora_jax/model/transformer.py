"""The T5 encoder-decoder: pre-norm layers, stacks sharing one relative position bias, and the LM head.

Non-scanned parameter tree (names chosen to map 1:1 onto Hugging Face T5):
  shared/embedding                                   <- shared
  encoder/relpos_bias/embedding                      <- encoder.block.0.layer.0.SelfAttention
                                                        .relative_attention_bias
  encoder/layers_N/self_attention_norm/scale         <- encoder.block.N.layer.0.layer_norm
  encoder/layers_N/self_attention/{q,k,v,o}/kernel   <- encoder.block.N.layer.0.SelfAttention.{q,k,v,o}
  encoder/layers_N/mlp_norm/scale                    <- encoder.block.N.layer.1.layer_norm
  encoder/layers_N/mlp/{wi | wi_0,wi_1},wo/kernel    <- encoder.block.N.layer.1.DenseReluDense.*
  encoder/final_norm/scale                           <- encoder.final_layer_norm
  decoder/... likewise, plus cross_attention_norm and cross_attention (HF layer.1), mlp at HF layer.2
  decoder/logits_dense/kernel (untied only)          <- lm_head
With scan_layers the layers_N subtrees become one `layers` subtree whose leaves gain a leading "layers" axis.

family="t5gemma" (Gemma 2 blocks; see ModelConfig) changes the tree as Hugging Face's T5Gemma needs it:
  encoder/embed/embedding, decoder/embed/embedding (one table per stack, as wide as the stack), no relpos_bias,
  and every sublayer's output normalised again: self_attention_post_norm, cross_attention_post_norm,
  mlp_post_norm beside the pre-norms above. The encoder's layers may be wider than the decoder's (cfg.stack).

family="t5gemma2" (Gemma 3 blocks) as "t5gemma", but: shared/embedding and shared/eoi_embedding when tied (else
one embed per stack as above, each with its eoi_embedding); self_attention/{q_norm,k_norm}/scale (QK-norm); the
decoder has no cross_attention(_norm, _post_norm): its self_attention also attends to the encoder output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.model import masks
from sora_jax.model.blocks import DecoderLayer, EncoderLayer, Ropes, run_layers
from sora_jax.model.config import ModelConfig
from sora_jax.model.layers import (
    ACT_BLD,
    Embed,
    LMHead,
    RelativePositionBias,
    RMSNorm,
    rope_sin_cos,
    soft_cap,
)


def _ropes(cfg: ModelConfig, positions_BL: jax.Array) -> Ropes:
    """RoPE angles of global layers and, when T5Gemma 2 gives sliding layers their own base, of sliding layers."""
    full = rope_sin_cos(positions_BL, cfg.d_kv, cfg.rope_theta, cfg.rope_linear_factor)
    local = None
    if cfg.is_t5gemma2 and any(cfg.sliding_layers("encoder") + cfg.sliding_layers("decoder")):
        local = rope_sin_cos(positions_BL, cfg.d_kv, cfg.rope_local_theta or cfg.rope_theta)
    return full, local


def _positions(tokens_BL: jax.Array, positions_BL: jax.Array | None) -> jax.Array:
    if positions_BL is not None:
        return positions_BL.astype(jnp.int32)
    return jnp.arange(tokens_BL.shape[1], dtype=jnp.int32)[None, :]


def _bias_positions(tokens_BL: jax.Array, segment_ids_BL: jax.Array | None,
                    positions_BL: jax.Array | None) -> jax.Array:
    # In a packed row a token's position is its index minus its segment's start, so inside a segment (the only
    # pairs the segment mask lets attend) relative positions equal relative indices: one [1, H, L, L] bias serves
    # every row (RoPE scores, too, depend on relative positions only). Per-row positions would make the bias
    # [B, H, L, L], and its float32 gradient was most of the train step's temporary memory (T5 v1.1 base, 64 rows
    # of 512 per chip: 16 of 18 GiB on TPU).
    return _positions(tokens_BL, None if segment_ids_BL is not None else positions_BL)


class EncoderStack(nn.Module):
    """Embedding -> dropout -> layers (sharing one bidirectional position bias, or RoPE) -> final norm -> dropout.

    `embed` is the embedding shared with the decoder (T5); None creates the stack's own (T5Gemma)."""

    config: ModelConfig
    embed: Embed | None = None

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, segment_ids_BL: jax.Array | None = None,
                 positions_BL: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
        """Token ids [B, L] -> encoded [B, L, D] in the compute dtype."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        embed = self.embed if self.embed is not None else Embed(cfg, name="embed")
        x_BLD = drop(embed(tokens_BL), deterministic=deterministic)
        positions_BL = _bias_positions(tokens_BL, segment_ids_BL, positions_BL)
        mask_B1LL = masks.key_padding_mask(tokens_BL, cfg.pad_id)
        if segment_ids_BL is not None:
            mask_B1LL = masks.combine_masks(mask_B1LL, masks.segment_mask(segment_ids_BL, segment_ids_BL))
        sliding_layers = cfg.sliding_layers("encoder")
        bias_BHLL = window_B1LL = None
        ropes: Ropes = (None, None)
        if cfg.is_t5gemma:
            ropes = _ropes(cfg, positions_BL)
            if any(sliding_layers):
                index_1L = jnp.arange(tokens_BL.shape[1], dtype=jnp.int32)[None, :]
                # T5Gemma: |distance| < window; T5Gemma 2: `window` keys around the query (split as transformers does).
                window_B1LL = masks.combine_masks(mask_B1LL, masks.window_mask(
                    index_1L, index_1L, cfg.sliding_window, bidirectional=True, split=cfg.is_t5gemma2))
        else:
            bias_BHLL = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(positions_BL, positions_BL)
        x_BLD = run_layers(self, EncoderLayer, sliding_layers, {"deterministic": deterministic},
                           x_BLD, (mask_B1LL, window_B1LL), bias_BHLL, ropes)
        x_BLD = RMSNorm(cfg, name="final_norm")(x_BLD)
        return nn.with_logical_constraint(drop(x_BLD, deterministic=deterministic), ACT_BLD)


def _cache_lengths(cfg: ModelConfig, sliding_layers: tuple[bool, ...],
                   max_length: int | None) -> tuple[int, int] | None:
    """(a global layer's, a sliding layer's) self-attention buffer length for decoding up to `max_length` tokens
    (None: each buffer as long as the first call's input).

    A sliding layer's older keys can never be seen again, so it keeps only its window; scanned layers share one
    buffer shape, so a scanned mix of layer types keeps the full length in every layer."""
    if max_length is None:
        return None
    window = max_length
    if any(sliding_layers) and not (cfg.scan_layers and len(set(sliding_layers)) > 1):
        window = min(cfg.sliding_window, max_length)
    return max_length, window


class DecoderStack(nn.Module):
    """Embedding -> layers (sharing one causal position bias, or RoPE) -> final norm -> dropout -> float32 logits
    (soft-capped when final_logit_softcapping is set). `embed` as for EncoderStack.

    Decoding state: besides the per-layer attention caches, "cache/cache_index" (a scalar) counts the
    tokens already written; it is the query position of the next step.
    """

    config: ModelConfig
    embed: Embed | None = None

    def _self_cache_lengths(self) -> tuple[int, int]:
        """(a global layer's, a sliding layer's) self-attention buffer length: the shapes [..., S, H, K] made by the
        first decode call."""
        cache = self.variables["cache"]
        cfg = self.config
        names = ["layers"] if cfg.scan_layers else [f"layers_{i}" for i in range(cfg.num_decoder_layers)]
        lengths = [cache[name]["self_attention"]["cached_key"].shape[-3] for name in names]
        return max(lengths), min(lengths)

    @nn.compact
    def __call__(
        self,
        encoded_BSD: jax.Array,
        encoder_tokens_BS: jax.Array,
        tokens_BL: jax.Array,
        encoder_segment_ids_BS: jax.Array | None = None,
        segment_ids_BL: jax.Array | None = None,
        positions_BL: jax.Array | None = None,
        *,
        deterministic: bool = True,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        """Decoder input ids [B, L] attending to encoded [B, S, D] -> logits [B, L, V] (float32)."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        length = tokens_BL.shape[1]
        embed = self.embed if self.embed is not None else Embed(cfg, name="embed")
        x_BLD = drop(embed(tokens_BL), deterministic=deterministic)

        decode_index = None
        sliding_layers = cfg.sliding_layers("decoder")
        stepping = decode and self.has_variable("cache", "cache_index")
        if stepping:
            # A cached step: queries sit at cache_index.., keys at the positions their cache slots hold.
            index_var = self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
            decode_index = index_var.value
            q_positions_1L = decode_index + jnp.arange(length, dtype=jnp.int32)[None, :]
            index_var.value = decode_index + length
            full_length, window_length = self._self_cache_lengths()
            if length > 1 and window_length < full_length:
                raise ValueError("a sliding layer's cache holds only its window: feed one token per cached step.")
            last_position = decode_index + length - 1
            k_positions_1S = masks.cache_slot_positions(last_position, full_length)
            self_mask_B1LL = masks.cached_keys_mask(q_positions_1L, k_positions_1S)
            window_keys_1W = masks.cache_slot_positions(last_position, window_length)
            window_base = (q_positions_1L, window_keys_1W, masks.cached_keys_mask(q_positions_1L, window_keys_1W))
            cache_lengths = None
        else:
            if decode:  # first decode call: create the cache, then run as a plain forward pass
                self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
            cache_lengths = _cache_lengths(cfg, sliding_layers, max_decode_length) if decode else None
            q_positions_1L = k_positions_1S = _bias_positions(tokens_BL, segment_ids_BL, positions_BL)
            index_1L = jnp.arange(length, dtype=jnp.int32)[None, :]
            # Causality by index within the row (not by position): with packing, the segment mask below
            # restricts it to each example.
            self_mask_B1LL = masks.causal_mask(index_1L, index_1L)
            if segment_ids_BL is not None:
                self_mask_B1LL = masks.combine_masks(
                    self_mask_B1LL, masks.segment_mask(segment_ids_BL, segment_ids_BL)
                )
            window_base = (index_1L, index_1L, self_mask_B1LL)
        # T5 masks no decoder padding: inputs are right-padded, so causality already keeps real queries off
        # pad keys (and pad_id usually equals decoder_start_id, which must stay visible).
        bias_BHLL = window_B1LL = None
        ropes: Ropes = (None, None)
        if any(sliding_layers):
            q_index_1L, k_index_1S, base_B1LL = window_base
            window_B1LL = masks.combine_masks(
                base_B1LL, masks.window_mask(q_index_1L, k_index_1S, cfg.sliding_window, bidirectional=False))
        if cfg.is_t5gemma:
            # Keys are cached already rotated, so a step only rotates its own queries and keys.
            ropes = _ropes(cfg, q_positions_1L)
        else:
            bias_BHLL = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(
                q_positions_1L, k_positions_1S
            )

        cross_mask_B1LS = masks.key_padding_mask(encoder_tokens_BS, cfg.pad_id)
        if segment_ids_BL is not None and encoder_segment_ids_BS is not None and not stepping:
            cross_mask_B1LS = masks.combine_masks(
                cross_mask_B1LS, masks.segment_mask(segment_ids_BL, encoder_segment_ids_BS)
            )

        attrs = {"deterministic": deterministic, "decode": decode, "cache_lengths": cache_lengths}
        x_BLD = run_layers(self, DecoderLayer, sliding_layers, attrs, x_BLD, encoded_BSD,
                           (self_mask_B1LL, window_B1LL), bias_BHLL, ropes, cross_mask_B1LS, decode_index)
        y_BLD = drop(RMSNorm(cfg, name="final_norm")(x_BLD), deterministic=deterministic)
        y_BLD = nn.with_logical_constraint(y_BLD, ACT_BLD)
        if not cfg.tie_word_embeddings:
            logits_BLV = LMHead(cfg, name="logits_dense")(y_BLD)
        elif cfg.is_t5gemma:
            logits_BLV = embed.attend(y_BLD)
        else:
            # The tied T5 head rescales because the embedding table is initialised with unit variance.
            logits_BLV = embed.attend(y_BLD * cfg.d_model**-0.5)
        return soft_cap(logits_BLV, cfg.final_logit_softcapping)


class EncoderDecoder(nn.Module):
    """T5 or T5Gemma encoder-decoder returning float32 logits [B, L, V].

    Greedy/beam decoding, with `params`, `model = EncoderDecoder(cfg)`:
      encoded = model.apply({"params": params}, enc_tokens, method=model.encode)
      _, vars = model.apply({"params": params}, encoded, enc_tokens, first_BL, decode=True,
                            max_decode_length=N, method=model.decode, mutable=["cache"])
      cache = vars["cache"]      # cache_index 0; encoder keys/values already projected
      loop: logits_B1V, vars = model.apply({"params": params, "cache": cache}, encoded, enc_tokens, tok_B1,
                                           decode=True, method=model.decode, mutable=["cache"])
            cache = vars["cache"]
    The first step feeds the start token (position 0); at most N tokens may be fed in total (later ones would
    see only the last N). A sliding layer's buffers hold min(sliding_window, N) slots, written round-robin (full
    length when the layers are scanned with mixed types: scanned buffers share one shape). Every cache leaf except
    the scalar decoder/cache_index has batch on axis 0 (also when scanned), so beams can be expanded/gathered with
    one tree_map skipping scalars.
    """

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        if not cfg.shares_embedding:  # one embedding per stack, each as wide as its stack
            self.encoder = EncoderStack(cfg.stack("encoder"))
            self.decoder = DecoderStack(cfg)
            return
        self.shared = Embed(cfg)
        self.encoder = EncoderStack(cfg.stack("encoder"), embed=self.shared)
        self.decoder = DecoderStack(cfg, embed=self.shared)

    def encode(self, encoder_input_tokens: jax.Array, *, encoder_segment_ids: jax.Array | None = None,
               encoder_positions: jax.Array | None = None, enable_dropout: bool = False) -> jax.Array:
        """Encoder token ids [B, S] -> encoded [B, S, D]."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(
        self,
        encoded: jax.Array,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
        max_decode_length: int | None = None,
    ) -> jax.Array:
        """Decoder input ids [B, L] + encoded [B, S, D] -> float32 logits [B, L, V].

        With decode=True and no cache yet, creates the cache (self-attention buffers of max_decode_length,
        default L; projected encoder keys/values) and returns an ordinary forward pass. With a cache, writes
        the L tokens at cache_index, returns their logits and advances cache_index by L.
        """
        return self.decoder(
            encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids, decoder_segment_ids,
            decoder_positions, deterministic=not enable_dropout, decode=decode,
            max_decode_length=max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        *,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        """Teacher-forced forward pass: encoder ids [B, S], decoder input ids [B, L] -> logits [B, L, V]."""
        encoded_BSD = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                                  encoder_positions=encoder_positions, enable_dropout=enable_dropout)
        return self.decode(
            encoded_BSD, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids, decoder_positions=decoder_positions,
            enable_dropout=enable_dropout, decode=decode,
        )
