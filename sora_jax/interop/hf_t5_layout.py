"""Which tensors a Hugging Face T5 checkpoint holds for a ModelConfig, and how each maps onto Sora's params.

HF `nn.Linear` weights are stored [out, in] (Sora kernels are [in, out]); attention projections flatten the
heads: q/k/v [H*K, D] <-> Sora [D, H, K], o [D, H*K] <-> Sora [H, K, D] (head-major on both sides). The
relative attention bias lives in block 0 of each stack only. See sora_jax/model/transformer.py for the tree.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sora_jax.model.config import ModelConfig

# How a tensor is converted between the two layouts.
COPY, DENSE, HEADS_IN, HEADS_OUT = "copy", "dense", "heads_in", "heads_out"

SHARED = "shared.weight"
LM_HEAD = "lm_head.weight"
# Copies of shared.weight that HF may store (tied modules, older conversions): accepted on import, not written.
EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Left in old T5 checkpoints (t5-small and co.); HF ignores it on load too (_keys_to_ignore_on_load_unexpected).
STALE_CROSS_BIAS = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor: its name and shape, where it goes in Sora's tree, and how it converts."""

    hf_name: str
    hf_shape: tuple[int, ...]
    kind: str
    stack: str | None  # "encoder" / "decoder" for per-layer tensors, else None
    layer: int | None  # block index for per-layer tensors
    sub_path: tuple[str, ...]  # the full Sora path for global tensors, the path inside the layer otherwise
    # Sora's shape of a HEADS_IN / HEADS_OUT tensor when it is not T5's [D, H, K] / [H, K, D] (grouped key/value
    # heads, a cross-attention reading a wider encoder).
    heads_shape: tuple[int, ...] | None = None

    def sora_path(self, scan_layers: bool) -> tuple[str, ...]:
        """Path in the param tree; with scan_layers a per-layer tensor is row `layer` of a stacked leaf."""
        if self.layer is None:
            return self.sub_path
        assert self.stack is not None
        return (self.stack, "layers" if scan_layers else f"layers_{self.layer}", *self.sub_path)

    def sora_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """Shape of the converted tensor (one layer's slice when scanned)."""
        if self.kind == DENSE:
            return self.hf_shape[::-1]
        if self.heads_shape is not None:
            return self.heads_shape
        if self.kind == HEADS_IN:
            return (cfg.d_model, cfg.num_heads, cfg.d_kv)
        if self.kind == HEADS_OUT:
            return (cfg.num_heads, cfg.d_kv, cfg.d_model)
        return self.hf_shape


def _attention(cfg: ModelConfig, prefix: str, stack: str, layer: int, sora_name: str) -> list[TensorSpec]:
    inner = cfg.num_heads * cfg.d_kv
    specs = [TensorSpec(f"{prefix}.{p}.weight", (inner, cfg.d_model), HEADS_IN, stack, layer, (sora_name, p, "kernel"))
             for p in ("q", "k", "v")]
    specs.append(TensorSpec(f"{prefix}.o.weight", (cfg.d_model, inner), HEADS_OUT, stack, layer,
                            (sora_name, "o", "kernel")))
    return specs


def _layer(cfg: ModelConfig, stack: str, layer: int) -> list[TensorSpec]:
    d, f = cfg.d_model, cfg.d_ff
    block = f"{stack}.block.{layer}.layer"

    def norm(sub: int, sora_name: str) -> TensorSpec:
        return TensorSpec(f"{block}.{sub}.layer_norm.weight", (d,), COPY, stack, layer, (sora_name, "scale"))

    specs = [norm(0, "self_attention_norm"), *_attention(cfg, f"{block}.0.SelfAttention", stack, layer,
                                                          "self_attention")]
    mlp_sub = 1
    if stack == "decoder":
        specs += [norm(1, "cross_attention_norm"),
                  *_attention(cfg, f"{block}.1.EncDecAttention", stack, layer, "cross_attention")]
        mlp_sub = 2
    specs.append(norm(mlp_sub, "mlp_norm"))
    mlp = f"{block}.{mlp_sub}.DenseReluDense"
    wi_names = ("wi_0", "wi_1") if cfg.feed_forward_proj == "gated-gelu" else ("wi",)
    specs += [TensorSpec(f"{mlp}.{w}.weight", (f, d), DENSE, stack, layer, ("mlp", w, "kernel")) for w in wi_names]
    specs.append(TensorSpec(f"{mlp}.wo.weight", (d, f), DENSE, stack, layer, ("mlp", "wo", "kernel")))
    return specs


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor of T5ForConditionalGeneration for `cfg`, in a stable order (HF's canonical names)."""
    v, d = cfg.vocab_size, cfg.d_model
    relpos = (cfg.relative_attention_num_buckets, cfg.num_heads)
    specs = [TensorSpec(SHARED, (v, d), COPY, None, None, ("shared", "embedding"))]
    for stack, num_layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        specs.append(TensorSpec(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", relpos,
                                COPY, None, None, (stack, "relpos_bias", "embedding")))
        for layer in range(num_layers):
            specs += _layer(cfg, stack, layer)
        specs.append(TensorSpec(f"{stack}.final_layer_norm.weight", (d,), COPY, None, None,
                                (stack, "final_norm", "scale")))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec(LM_HEAD, (v, d), DENSE, None, None, ("decoder", "logits_dense", "kernel")))
    return specs


def optional_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensors a checkpoint may hold beyond tensor_specs (duplicates and leftovers), with their shapes."""
    extra = {name: (cfg.vocab_size, cfg.d_model) for name in EMBED_COPIES}
    extra[STALE_CROSS_BIAS] = (cfg.relative_attention_num_buckets, cfg.num_heads)
    if cfg.tie_word_embeddings:
        extra[LM_HEAD] = (cfg.vocab_size, cfg.d_model)  # must then equal shared.weight
    return extra


def to_sora(spec: TensorSpec, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """HF layout -> Sora layout (one layer's slice)."""
    if spec.kind == DENSE:
        return array.T
    if spec.kind in (HEADS_IN, HEADS_OUT):
        return array.T.reshape(spec.sora_shape(cfg))
    return array


def to_hf(spec: TensorSpec, array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Sora layout (one layer's slice) -> HF layout, C-contiguous as safetensors needs."""
    if spec.kind == DENSE:
        array = array.T
    elif spec.kind in (HEADS_IN, HEADS_OUT):
        array = array.reshape(spec.hf_shape[::-1]).T
    return np.ascontiguousarray(array)
