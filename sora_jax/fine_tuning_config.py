"""Value checks of the distillation and LoRA config blocks (`config.distill`, `config.lora`), called by
`config.validate`; the keys and defaults are in `config.base_config`."""

from __future__ import annotations

from typing import Any

import ml_collections

# QLoRA base schemes (sora_jax/compression/providers.py SCHEMES; not imported, so config stays free of qwix).
QLORA_SCHEMES = ("int8", "int4")
# Layers LoRA can adapt (sora_jax/compression/lora.py; the LM head cannot be).
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


def validate_distill(distill: ml_collections.ConfigDict, loss: ml_collections.ConfigDict, require: Any) -> None:
    """`config.distill`: the teacher's spec form, temperature and alpha (the teacher itself is checked by the run)."""
    if not distill.teacher:
        return
    require(isinstance(distill.teacher, str) and distill.teacher.startswith(("hf:", "workdir:")),
            f"config.distill.teacher={distill.teacher!r}: use workdir:DIR[@STEP|@best] (a Sora run) or hf:DIR (a "
            "Hugging Face T5 checkpoint), or '' for no distillation.")
    temperature, alpha = distill.temperature, distill.alpha
    require(isinstance(temperature, int | float) and not isinstance(temperature, bool) and 0 < temperature < 1e6,
            f"config.distill.temperature={temperature!r} must be a number > 0; use e.g. 2.0.")
    require(isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0,
            f"config.distill.alpha={alpha!r} must be in [0, 1]; use e.g. 0.5 (1 = teacher only).")
    require(loss.label_smoothing == 0.0,
            f"config.loss.label_smoothing={loss.label_smoothing} with distillation: the teacher's soft targets "
            "replace label smoothing; set it to 0.")


def validate_lora(config: ml_collections.ConfigDict, require: Any) -> None:
    """`config.lora`: rank, alpha, targets and the QLoRA base scheme, and a pretrained base (ranks too large for a
    layer are refused when the model is built)."""
    lora = config.lora
    rank = lora.rank
    require(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0,
            f"config.lora.rank={rank!r} must be an integer >= 1 (or 0 = no LoRA); use e.g. 8.")
    require(lora.base_quantization in ("", *QLORA_SCHEMES),
            f"config.lora.base_quantization={lora.base_quantization!r}: use one of {', '.join(QLORA_SCHEMES)} "
            "(QLoRA) or '' (a float base).")
    if rank == 0:
        require(not lora.base_quantization, f"config.lora.base_quantization={lora.base_quantization!r} quantizes "
                "the frozen base of a LoRA run: set config.lora.rank too (e.g. 8).")
        return
    require(bool(config.init_from),
            f"config.lora.rank={rank} needs a pretrained base: set config.init_from=workdir:DIR or hf:DIR (LoRA "
            "trains adapters on frozen pretrained weights).")
    require(isinstance(lora.alpha, int | float) and not isinstance(lora.alpha, bool) and 0 < lora.alpha < 1e6,
            f"config.lora.alpha={lora.alpha!r} must be a number > 0; use e.g. 2 * rank.")
    targets = lora.targets
    require(isinstance(targets, tuple | list) and bool(targets) and all(isinstance(t, str) for t in targets),
            f"config.lora.targets={targets!r} must be a non-empty list of layer names among "
            f"{', '.join(LORA_TARGETS)}.")
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    require(not unknown, f"config.lora.targets: unknown layer(s) {', '.join(unknown)}; choose among "
            f"{', '.join(LORA_TARGETS)} (the LM head cannot be adapted).")
