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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sora_jax.model import masks
from sora_jax.model.attention import MultiHeadAttention
from sora_jax.model.config import ModelConfig
from sora_jax.model.layers import ACT_BLD, MLP, Embed, LMHead, RelativePositionBias, RMSNorm


class EncoderLayer(nn.Module):
    """x + drop(self_attn(norm(x))), then x + drop(mlp(norm(x)))."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BLD: jax.Array, mask_B1LL: jax.Array | None,
                 bias_BHLL: jax.Array) -> tuple[jax.Array, None]:
        """Returns (x, None): the (carry, output) pair nn.scan expects, also used unscanned for one shape."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h_BLD = RMSNorm(cfg, name="self_attention_norm")(x_BLD)
        h_BLD = MultiHeadAttention(cfg, name="self_attention")(
            h_BLD, h_BLD, mask_B1LS=mask_B1LL, bias_BHLS=bias_BHLL, deterministic=self.deterministic
        )
        x_BLD = x_BLD + drop(h_BLD, deterministic=self.deterministic)
        h_BLD = MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x_BLD), deterministic=self.deterministic)
        x_BLD = x_BLD + drop(h_BLD, deterministic=self.deterministic)
        return nn.with_logical_constraint(x_BLD, ACT_BLD), None


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then the MLP; each pre-norm."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x_BLD: jax.Array, encoded_BSD: jax.Array, self_mask_B1LL: jax.Array | None,
                 self_bias_BHLL: jax.Array, cross_mask_B1LS: jax.Array | None,
                 decode_index: jax.Array | None) -> tuple[jax.Array, None]:
        """Returns (x, None) like EncoderLayer."""
        cfg = self.config
        det = self.deterministic
        drop = nn.Dropout(cfg.dropout_rate)
        h_BLD = RMSNorm(cfg, name="self_attention_norm")(x_BLD)
        h_BLD = MultiHeadAttention(cfg, name="self_attention")(
            h_BLD, h_BLD, mask_B1LS=self_mask_B1LL, bias_BHLS=self_bias_BHLL, deterministic=det,
            decode=self.decode, decode_index=decode_index, cache_length=self.cache_length,
        )
        x_BLD = x_BLD + drop(h_BLD, deterministic=det)
        h_BLD = RMSNorm(cfg, name="cross_attention_norm")(x_BLD)
        h_BLD = MultiHeadAttention(cfg, is_cross_attention=True, name="cross_attention")(
            h_BLD, encoded_BSD, mask_B1LS=cross_mask_B1LS, deterministic=det, decode=self.decode
        )
        x_BLD = x_BLD + drop(h_BLD, deterministic=det)
        h_BLD = MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x_BLD), deterministic=det)
        x_BLD = x_BLD + drop(h_BLD, deterministic=det)
        return nn.with_logical_constraint(x_BLD, ACT_BLD), None


def _run_layers(parent: nn.Module, layer_cls: type[nn.Module], num_layers: int, layer_attrs: dict[str, Any],
                x_BLD: jax.Array, *args: Any) -> jax.Array:
    """Applies num_layers copies of layer_cls, scanned (one traced body) or unrolled, with optional remat."""
    cfg: ModelConfig = parent.config
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
            in_axes=(nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x_BLD, _ = cls(cfg, **layer_attrs, parent=parent, name="layers")(x_BLD, *args)
        return x_BLD
    for i in range(num_layers):
        x_BLD, _ = cls(cfg, **layer_attrs, parent=parent, name=f"layers_{i}")(x_BLD, *args)
    return x_BLD


def _positions(tokens_BL: jax.Array, positions_BL: jax.Array | None) -> jax.Array:
    if positions_BL is not None:
        return positions_BL.astype(jnp.int32)
    return jnp.arange(tokens_BL.shape[1], dtype=jnp.int32)[None, :]


def _bias_positions(tokens_BL: jax.Array, segment_ids_BL: jax.Array | None,
                    positions_BL: jax.Array | None) -> jax.Array:
    # In a packed row a token's position is its index minus its segment's start, so inside a segment (the only
    # pairs the segment mask lets attend) relative positions equal relative indices: one [1, H, L, L] bias serves
    # every row. Per-row positions would make it [B, H, L, L], and its float32 gradient was most of the train step's
    # temporary memory (T5 v1.1 base, 64 rows of 512 per chip: 16 of 18 GiB on TPU).
    return _positions(tokens_BL, None if segment_ids_BL is not None else positions_BL)


class EncoderStack(nn.Module):
    """Embedding -> dropout -> layers (sharing one bidirectional position bias) -> final norm -> dropout."""

    config: ModelConfig
    embed: Embed

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, segment_ids_BL: jax.Array | None = None,
                 positions_BL: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
        """Token ids [B, L] -> encoded [B, L, D] in the compute dtype."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        x_BLD = drop(self.embed(tokens_BL), deterministic=deterministic)
        positions_BL = _bias_positions(tokens_BL, segment_ids_BL, positions_BL)
        relpos_bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")
        bias_BHLL = relpos_bias(positions_BL, positions_BL)
        mask_B1LL = masks.key_padding_mask(tokens_BL, cfg.pad_id)
        if segment_ids_BL is not None:
            mask_B1LL = masks.combine_masks(mask_B1LL, masks.segment_mask(segment_ids_BL, segment_ids_BL))
        x_BLD = _run_layers(self, EncoderLayer, cfg.num_encoder_layers, {"deterministic": deterministic},
                            x_BLD, mask_B1LL, bias_BHLL)
        x_BLD = RMSNorm(cfg, name="final_norm")(x_BLD)
        return nn.with_logical_constraint(drop(x_BLD, deterministic=deterministic), ACT_BLD)


class DecoderStack(nn.Module):
    """Embedding -> layers (sharing one causal position bias) -> final norm -> dropout -> float32 logits.

    Decoding state: besides the per-layer attention caches, "cache/cache_index" (a scalar) counts the
    tokens already written; it is the query position of the next step.
    """

    config: ModelConfig
    embed: Embed

    def _self_cache_length(self) -> int:
        # The static cache size is the shape of the first layer's self-attention buffer, [..., S, H, K].
        cache = self.variables["cache"]
        first = cache["layers"] if self.config.scan_layers else cache["layers_0"]
        return first["self_attention"]["cached_key"].shape[-3]

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
        x_BLD = drop(self.embed(tokens_BL), deterministic=deterministic)

        decode_index = None
        stepping = decode and self.has_variable("cache", "cache_index")
        if stepping:
            # A cached step: queries sit at cache_index.. in a key range covering the whole cache.
            index_var = self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
            decode_index = index_var.value
            q_positions_1L = decode_index + jnp.arange(length, dtype=jnp.int32)[None, :]
            k_positions_1S = jnp.arange(self._self_cache_length(), dtype=jnp.int32)[None, :]
            index_var.value = decode_index + length
            self_mask_B1LL = masks.causal_mask(q_positions_1L, k_positions_1S)
            cache_length = None
        else:
            if decode:  # first decode call: create the cache, then run as a plain forward pass
                self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
            cache_length = max_decode_length if decode else None
            q_positions_1L = k_positions_1S = _bias_positions(tokens_BL, segment_ids_BL, positions_BL)
            index_1L = jnp.arange(length, dtype=jnp.int32)[None, :]
            # Causality by index within the row (not by position): with packing, the segment mask below
            # restricts it to each example.
            self_mask_B1LL = masks.causal_mask(index_1L, index_1L)
            if segment_ids_BL is not None:
                self_mask_B1LL = masks.combine_masks(
                    self_mask_B1LL, masks.segment_mask(segment_ids_BL, segment_ids_BL)
                )
        # T5 masks no decoder padding: inputs are right-padded, so causality already keeps real queries off
        # pad keys (and pad_id usually equals decoder_start_id, which must stay visible).
        bias_BHLL = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(
            q_positions_1L, k_positions_1S
        )

        cross_mask_B1LS = masks.key_padding_mask(encoder_tokens_BS, cfg.pad_id)
        if segment_ids_BL is not None and encoder_segment_ids_BS is not None and not stepping:
            cross_mask_B1LS = masks.combine_masks(
                cross_mask_B1LS, masks.segment_mask(segment_ids_BL, encoder_segment_ids_BS)
            )

        attrs = {"deterministic": deterministic, "decode": decode, "cache_length": cache_length}
        x_BLD = _run_layers(self, DecoderLayer, cfg.num_decoder_layers, attrs, x_BLD, encoded_BSD,
                            self_mask_B1LL, bias_BHLL, cross_mask_B1LS, decode_index)
        y_BLD = drop(RMSNorm(cfg, name="final_norm")(x_BLD), deterministic=deterministic)
        y_BLD = nn.with_logical_constraint(y_BLD, ACT_BLD)
        if cfg.tie_word_embeddings:
            # The tied head rescales because the embedding table is initialised with unit variance.
            return self.embed.attend(y_BLD * cfg.d_model**-0.5)
        return LMHead(cfg, name="logits_dense")(y_BLD)


class EncoderDecoder(nn.Module):
    """T5-style encoder-decoder returning float32 logits [B, L, V].

    Greedy/beam decoding, with `params`, `model = EncoderDecoder(cfg)`:
      encoded = model.apply({"params": params}, enc_tokens, method=model.encode)
      _, vars = model.apply({"params": params}, encoded, enc_tokens, first_BL, decode=True,
                            max_decode_length=N, method=model.decode, mutable=["cache"])
      cache = vars["cache"]      # cache_index 0; encoder keys/values already projected
      loop: logits_B1V, vars = model.apply({"params": params, "cache": cache}, encoded, enc_tokens, tok_B1,
                                           decode=True, method=model.decode, mutable=["cache"])
            cache = vars["cache"]
    The first step feeds the start token (position 0); at most N tokens may be fed in total (further writes
    would be clamped onto the last slot). Every cache leaf except the scalar decoder/cache_index has batch
    on axis 0 (also when scanned), so beams can be expanded/gathered with one tree_map skipping scalars.
    """

    config: ModelConfig

    def setup(self) -> None:
        self.shared = Embed(self.config)
        self.encoder = EncoderStack(self.config, embed=self.shared)
        self.decoder = DecoderStack(self.config, embed=self.shared)

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
