"""Which tensors a Hugging Face T5Gemma 2 checkpoint holds for a ModelConfig, and where each goes in Sora's params.

Names are those transformers 5 writes (`model.encoder.*` for the text encoder, whose module is
`model.encoder.text_model`). Conversions are T5Gemma's (hf_t5gemma_layout) plus the per-head QK-norm scales; the
decoder has one merged attention per layer (`self_attn`, no `cross_attn`). Tied, both stacks and the head use the
encoder's `embed_tokens` (weight and eoi_embedding): the decoder's copies and the head are then not stored (a save
that keeps them must keep them equal). The vision tower (SigLIP) and its projector are skipped on import; an export
writes a placeholder of zeros (PLACEHOLDER_VISION) so that transformers loads it without missing weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sora_jax.interop.hf_t5_layout import COPY, DENSE, TensorSpec
from sora_jax.interop.hf_t5gemma_layout import MLP, NORMS, attention_specs
from sora_jax.model.config import ModelConfig

ENCODER_EMBED = "model.encoder.embed_tokens.weight"
ENCODER_EOI = "model.encoder.embed_tokens.eoi_embedding"
DECODER_EMBED = "model.decoder.embed_tokens.weight"
DECODER_EOI = "model.decoder.embed_tokens.eoi_embedding"
LM_HEAD = "lm_head.out_proj.weight"
VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.multi_modal_projector.")
# The text encoder's module path, which transformers also loads from (and older saves may have kept).
RENAMED_PREFIXES = (("model.encoder.text_model.", "model.encoder."),)

# The smallest SigLIP transformers builds (one 14x14 patch, one layer 4 wide, no pooling head) for an export's config.
PLACEHOLDER_VISION: dict[str, Any] = dict(
    model_type="siglip_vision_model", hidden_size=4, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
    num_channels=3, image_size=14, patch_size=14, vision_use_head=False, hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6, attention_dropout=0.0,
)
PLACEHOLDER_MM_TOKENS = 1


def _layer(cfg: ModelConfig, stack: str, layer: int) -> list[TensorSpec]:
    sub = cfg.stack(stack)
    d, f, k = sub.d_model, sub.d_ff, cfg.d_kv
    block = f"model.{stack}.layers.{layer}"
    specs = attention_specs(sub, f"{block}.self_attn", stack, layer, "self_attention", d)
    specs += [TensorSpec(f"{block}.self_attn.{p}_norm.weight", (k,), COPY, stack, layer,
                         ("self_attention", f"{p}_norm", "scale")) for p in ("q", "k")]
    specs += [TensorSpec(f"{block}.{hf}.weight", (d,), COPY, stack, layer, (sora, "scale"))
              for hf, sora in NORMS.items() if "cross" not in hf]
    specs += [TensorSpec(f"{block}.mlp.{hf}.weight", (d, f) if hf == "down_proj" else (f, d), DENSE, stack, layer,
                         ("mlp", sora, "kernel")) for hf, sora in MLP.items()]
    return specs


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    """Every text tensor of T5Gemma2ForConditionalGeneration for `cfg`, in a stable order (HF's names)."""
    specs = []
    for stack in ("encoder", "decoder"):
        d = cfg.stack(stack).d_model
        if stack == "encoder" or not cfg.tie_word_embeddings:
            where = ("shared",) if cfg.tie_word_embeddings else (stack, "embed")
            specs += [TensorSpec(f"model.{stack}.embed_tokens.weight", (cfg.vocab_size, d), COPY, None, None,
                                 (*where, "embedding")),
                      TensorSpec(f"model.{stack}.embed_tokens.eoi_embedding", (d,), COPY, None, None,
                                 (*where, "eoi_embedding"))]
        for layer in range(getattr(cfg, f"num_{stack}_layers")):
            specs += _layer(cfg, stack, layer)
        specs.append(TensorSpec(f"model.{stack}.norm.weight", (d,), COPY, None, None, (stack, "final_norm", "scale")))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec(LM_HEAD, (cfg.vocab_size, cfg.d_model), DENSE, None, None,
                                ("decoder", "logits_dense", "kernel")))
    return specs


def tied_copies(cfg: ModelConfig) -> dict[str, str]:
    """Stored copies of tied tensors that some saves keep -> the tensor each must equal."""
    if not cfg.tie_word_embeddings:
        return {}
    return {DECODER_EMBED: ENCODER_EMBED, DECODER_EOI: ENCODER_EOI, LM_HEAD: ENCODER_EMBED}


def optional_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tied copies' shapes (tied_copies)."""
    shapes = {ENCODER_EMBED: (cfg.vocab_size, cfg.d_model), ENCODER_EOI: (cfg.d_model,)}
    return {copy: shapes[original] for copy, original in tied_copies(cfg).items()}


def placeholder_tensors(cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The zero weights of PLACEHOLDER_VISION and its projector onto the text width, as transformers names them."""
    v, d = PLACEHOLDER_VISION["hidden_size"], cfg.d_model
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.patch_embedding.weight": (v, PLACEHOLDER_VISION["num_channels"], 14, 14),
        "embeddings.patch_embedding.bias": (v,), "embeddings.position_embedding.weight": (1, v),
        "post_layernorm.weight": (v,), "post_layernorm.bias": (v,),
    }
    layer = "encoder.layers.0."
    for name in ("layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                 "self_attn.out_proj", "mlp.fc1", "mlp.fc2"):
        shapes[f"{layer}{name}.bias"] = (v,)
        shapes[f"{layer}{name}.weight"] = (v,) if "norm" in name else (v, v)
    tensors = {f"{VISION_PREFIXES[0]}{name}": np.zeros(shape, np.float32) for name, shape in shapes.items()}
    tensors[f"{VISION_PREFIXES[1]}mm_input_projection_weight"] = np.zeros((v, d), np.float32)
    tensors[f"{VISION_PREFIXES[1]}mm_soft_emb_norm.weight"] = np.zeros((v,), np.float32)
    return tensors
