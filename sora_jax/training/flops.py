"""Analytic FLOPs of an encoder-decoder train step, device peaks, and model FLOPs utilisation (MFU).

Counting convention (MaxText's, extended to two stacks): a matmul of an [N, a] by an [a, b] matrix costs 2*N*a*b;
the backward pass costs twice the forward, so a train step is 3x the forward pass. Embedding lookups, norms,
softmax, dropout and the optimizer update are not counted. Padding tokens are counted: the step computes them.
"""

from __future__ import annotations

import dataclasses
import re

from sora_jax.errors import SoraError
from sora_jax.model.config import ModelConfig

# Forward + backward: the backward pass needs a matmul for the input gradient and one for the weight gradient.
TRAIN_MULTIPLIER = 3


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Forward FLOPs of one train step by part, for the whole global batch; `total` is the train step (x3)."""

    encoder_weights: float  # q/k/v/o and MLP of every encoder layer, on input tokens.
    decoder_weights: float  # self-attention q/k/v/o, cross-attention q/o and MLP, on target tokens.
    cross_kv: float  # cross-attention k/v projections, on input tokens (they project the encoder output).
    lm_head: float  # d_model x vocab, on target tokens.
    attention: float  # scores and weighted values: encoder, causal decoder (halved) and cross-attention.
    grad_accum_steps: int = 1

    @property
    def forward(self) -> float:
        """Forward-pass FLOPs of the whole batch."""
        return self.encoder_weights + self.decoder_weights + self.cross_kv + self.lm_head + self.attention

    @property
    def total(self) -> float:
        """FLOPs of one optimizer step (forward + backward over all microbatches)."""
        return TRAIN_MULTIPLIER * self.forward

    @property
    def per_microbatch(self) -> float:
        """FLOPs of one of the grad_accum_steps forward + backward passes."""
        return self.total / self.grad_accum_steps


def _mlp_params(cfg: ModelConfig) -> int:
    matrices = 3 if cfg.feed_forward_proj == "gated-gelu" else 2  # wi_0, wi_1, wo | wi, wo
    return matrices * cfg.d_model * cfg.d_ff


def train_step_flops(cfg: ModelConfig, batch_size: int, input_length: int, target_length: int,
                     grad_accum_steps: int = 1) -> StepFlops:
    """FLOPs of one train step on a global batch of `batch_size` rows of `input_length` + `target_length`.

    With gradient accumulation the step runs grad_accum_steps microbatches of batch_size / grad_accum_steps
    rows: the same FLOPs in total, `per_microbatch` for each. T5Gemma's grouped key/value heads, head_dim and
    an encoder wider than the decoder are counted as built; sliding windows are not discounted (the attention
    computes every score and masks those outside the window).
    """
    for name, value in (("batch_size", batch_size), ("input_length", input_length),
                        ("target_length", target_length), ("grad_accum_steps", grad_accum_steps)):
        if not isinstance(value, int) or value <= 0:
            raise SoraError(f"train_step_flops: {name} must be a positive integer, got {value!r}.")
    if batch_size % grad_accum_steps:
        raise SoraError(f"train_step_flops: batch_size={batch_size} is not divisible by grad_accum_steps="
                        f"{grad_accum_steps}; pass the global batch and a divisor of it.")
    B, S, T = batch_size, input_length, target_length
    enc = cfg.stack("encoder")
    # q and o project to all heads, k and v to the key/value heads (fewer under grouped-query attention).
    enc_q = enc.d_model * enc.num_heads * enc.d_kv
    enc_kv = enc.d_model * enc.kv_heads * enc.d_kv
    dec_q = cfg.d_model * cfg.num_heads * cfg.d_kv
    dec_kv = cfg.d_model * cfg.kv_heads * cfg.d_kv
    cross_kv = enc.d_model * cfg.kv_heads * cfg.d_kv  # decoder heads reading the encoder's width
    enc_layer = 2 * enc_q + 2 * enc_kv + _mlp_params(enc)
    # self q/k/v/o, cross q/o (T5Gemma 2's merged attention has none: its queries and output serve both), MLP
    dec_layer = 2 * dec_q + 2 * dec_kv + (0 if cfg.is_t5gemma2 else 2 * dec_q) + _mlp_params(cfg)
    enc_tokens, dec_tokens = B * S, B * T
    # q.k^T and probs.v: 2 matmuls of 2*L_q*L_k*H*K each (every query head, grouped or not).
    enc_scores = 4 * B * S * S * enc.num_heads * enc.d_kv
    dec_scores = 4 * B * T * T * cfg.num_heads * cfg.d_kv // 2  # causal: half the score matrix is masked
    cross_scores = 4 * B * T * S * cfg.num_heads * cfg.d_kv
    return StepFlops(
        encoder_weights=float(2 * enc_tokens * enc_layer * cfg.num_encoder_layers),
        decoder_weights=float(2 * dec_tokens * dec_layer * cfg.num_decoder_layers),
        cross_kv=float(2 * enc_tokens * 2 * cross_kv * cfg.num_decoder_layers),
        lm_head=float(2 * dec_tokens * cfg.d_model * cfg.vocab_size),
        attention=float(enc_scores * cfg.num_encoder_layers + (dec_scores + cross_scores) * cfg.num_decoder_layers),
        grad_accum_steps=grad_accum_steps,
    )


# Dense bfloat16 peak TFLOP/s per chip (vendor spec sheets). Kinds not listed get no MFU rather than a guess.
_TPU_PEAKS = {("4", ""): 275.0, ("5", "lite"): 197.0, ("5", "e"): 197.0, ("5", ""): 459.0, ("5", "p"): 459.0,
              ("6", "lite"): 918.0, ("6", "e"): 918.0}
_TPU_KIND = re.compile(r"^tpu\s*v(\d+)\s*(lite|e|p)?$")


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak TFLOP/s of one device of jax's `device_kind`, or None when it is not known (e.g. CPU).

    "TPU v5 lite" and "TPU v5e" are v5e, "TPU v5" and "TPU v5p" v5p, "TPU v6 lite" v6e. H100/H200 are the SXM
    parts (989); the PCIe and NVL variants have lower clocks and are not listed, nor is "TPU v4 lite".
    """
    kind = " ".join(device_kind.lower().split())
    match = _TPU_KIND.match(kind)
    if match:
        return _TPU_PEAKS.get((match.group(1), match.group(2) or ""))
    if not kind.startswith("nvidia"):
        return None
    if "a100" in kind:
        return 312.0  # SXM and PCIe share the bf16 dense peak.
    if re.search(r"\bg?h(100|200)\b", kind) and not re.search(r"pcie|nvl", kind):
        return 989.0
    return None


def mfu(flops_per_step: float, seconds_per_step: float, num_devices: int, device_kind: str) -> float | None:
    """Achieved FLOP/s over the peak of `num_devices` devices of `device_kind` (a fraction), None if unknown."""
    peak = peak_tflops(device_kind)
    if peak is None or seconds_per_step <= 0 or num_devices <= 0:
        return None
    return flops_per_step / seconds_per_step / (num_devices * peak * 1e12)
