"""Which tensors a Hugging Face T5Gemma checkpoint holds for a ModelConfig, and where each goes in Sora's params.

Conversions are those of hf_t5_layout (nn.Linear [out, in] <-> Sora [in, out]; heads flattened head-major), with
grouped key/value heads ([G*K, D] <-> [D, G, K]) and cross-attention keys/values read from the encoder's width.
Each stack has its own embedding; a tied head is the decoder's, and `lm_head.out_proj.weight` is then not stored.
"""

from __future__ import annotations

from sora_jax.interop.hf_t5_layout import COPY, DENSE, HEADS_IN, HEADS_OUT, TensorSpec
from sora_jax.model.config import ModelConfig

ENCODER_EMBED = "model.encoder.embed_tokens.weight"
DECODER_EMBED = "model.decoder.embed_tokens.weight"
LM_HEAD = "lm_head.out_proj.weight"

# HF sublayer -> Sora sublayer, and HF norm -> Sora norm.
NORMS = {"pre_self_attn_layernorm": "self_attention_norm", "post_self_attn_layernorm": "self_attention_post_norm",
          "pre_cross_attn_layernorm": "cross_attention_norm", "post_cross_attn_layernorm": "cross_attention_post_norm",
          "pre_feedforward_layernorm": "mlp_norm", "post_feedforward_layernorm": "mlp_post_norm"}
MLP = {"gate_proj": "wi_0", "up_proj": "wi_1", "down_proj": "wo"}


def attention_specs(cfg: ModelConfig, prefix: str, stack: str, layer: int, sora_name: str,
                    source_width: int) -> list[TensorSpec]:
    """q/k/v/o of one attention module `prefix` (keys and values read `source_width`-wide inputs)."""
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.d_kv
    spec = [TensorSpec(f"{prefix}.q_proj.weight", (h * k, d), HEADS_IN, stack, layer, (sora_name, "q", "kernel"),
                       (d, h, k))]
    spec += [TensorSpec(f"{prefix}.{p}_proj.weight", (g * k, source_width), HEADS_IN, stack, layer,
                        (sora_name, p, "kernel"), (source_width, g, k)) for p in ("k", "v")]
    spec.append(TensorSpec(f"{prefix}.o_proj.weight", (d, h * k), HEADS_OUT, stack, layer, (sora_name, "o", "kernel"),
                           (h, k, d)))
    return spec


def _layer(model_cfg: ModelConfig, stack: str, layer: int) -> list[TensorSpec]:
    cfg = model_cfg.stack(stack)
    d, f = cfg.d_model, cfg.d_ff
    block = f"model.{stack}.layers.{layer}"
    specs = attention_specs(cfg, f"{block}.self_attn", stack, layer, "self_attention", d)
    if stack == "decoder":
        specs += attention_specs(cfg, f"{block}.cross_attn", stack, layer, "cross_attention",
                            model_cfg.stack("encoder").d_model)
    for hf_norm, sora_norm in NORMS.items():
        if "cross" not in hf_norm or stack == "decoder":
            specs.append(TensorSpec(f"{block}.{hf_norm}.weight", (d,), COPY, stack, layer, (sora_norm, "scale")))
    for hf_name, sora_name in MLP.items():
        shape = (d, f) if hf_name == "down_proj" else (f, d)
        specs.append(TensorSpec(f"{block}.mlp.{hf_name}.weight", shape, DENSE, stack, layer,
                                ("mlp", sora_name, "kernel")))
    return specs


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor of T5GemmaForConditionalGeneration for `cfg`, in a stable order (HF's names)."""
    specs = []
    for stack in ("encoder", "decoder"):
        d = cfg.stack(stack).d_model
        specs.append(TensorSpec(f"model.{stack}.embed_tokens.weight", (cfg.vocab_size, d), COPY, None, None,
                                (stack, "embed", "embedding")))
        for layer in range(getattr(cfg, f"num_{stack}_layers")):
            specs += _layer(cfg, stack, layer)
        specs.append(TensorSpec(f"model.{stack}.norm.weight", (d,), COPY, None, None, (stack, "final_norm", "scale")))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec(LM_HEAD, (cfg.vocab_size, cfg.d_model), DENSE, None, None,
                                ("decoder", "logits_dense", "kernel")))
    return specs


def optional_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """A tied head's copy, which some saves keep (it must then equal the decoder's embedding)."""
    return {LM_HEAD: (cfg.vocab_size, cfg.d_model)} if cfg.tie_word_embeddings else {}
