"""Value checks of a whole config, run once at the top so that bad input fails before anything is compiled."""

from __future__ import annotations

from typing import Any

import ml_collections

from sora_jax.compression.names import LORA_TARGETS, SCHEMES
from sora_jax.config.loading import check_keys
from sora_jax.errors import SoraError


def validate(config: ml_collections.ConfigDict) -> None:
    """Check values (not only keys) once, at the top, so that bad input fails before any compile."""
    check_keys(config)

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise SoraError(message)

    for key in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "keep_checkpoints", "grad_accum_steps"):
        value = config[key]
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"config.{key} must be a positive integer, got {value!r}.")
    require(config.batch_size % config.grad_accum_steps == 0,
            f"config.batch_size={config.batch_size} is not divisible by "
            f"config.grad_accum_steps={config.grad_accum_steps}; pick values whose ratio is an integer.")
    data = config.data
    require(data.max_input_length >= 0 and data.max_target_length >= 0,
            "config.data max lengths must be positive (or 0: what the training data needs).")
    require(data.eval_batch_size > 0, "config.data.eval_batch_size must be positive.")
    require(data.num_shards >= 0, "config.data.num_shards must be >= 0 (0 = one shard per process).")
    require(data.objective in ("", "span_corruption", "prefix_lm", "ul2"),
            f"config.data.objective={data.objective!r}: use span_corruption, prefix_lm or ul2 (or '' for a "
            "supervised task).")
    require(0.0 < data.noise_density < 1.0, f"config.data.noise_density={data.noise_density} must be in (0, 1).")
    require(data.mean_noise_span_length > 0, "config.data.mean_noise_span_length must be positive.")
    require(isinstance(data.num_workers, int) and data.num_workers >= 0,
            f"config.data.num_workers={data.num_workers!r} must be >= 0 (0 = no worker processes).")
    if data.mixture:
        from sora_jax.data.mixture import component_specs  # The task registry is loaded only for a mixture.
        from sora_jax.data.options import DataOptions

        component_specs(DataOptions.from_config(data))
    require(config.rng_impl in ("threefry2x32", "rbg", "unsafe_rbg"),
            f"config.rng_impl={config.rng_impl!r}: use threefry2x32, rbg or unsafe_rbg.")
    require(config.optimizer.name in ("adamw", "adafactor", "sgd"),
            f"config.optimizer.name={config.optimizer.name!r}: use adamw, adafactor or sgd.")
    require(config.optimizer.schedule in ("cosine", "rsqrt", "constant"),
            f"config.optimizer.schedule={config.optimizer.schedule!r}: use cosine, rsqrt or constant.")
    require(config.optimizer.learning_rate > 0, "config.optimizer.learning_rate must be positive.")
    require(config.optimizer.warmup_steps >= 0, "config.optimizer.warmup_steps must be >= 0.")
    if config.quantization.qat:
        require(config.quantization.qat in SCHEMES, f"config.quantization.qat={config.quantization.qat!r}: use one "
                f"of {', '.join(SCHEMES)} (or '' for float training).")
        require(not config.lora.rank, "config.quantization.qat with config.lora.rank: quantization-aware training "
                "of LoRA adapters is not supported; train the adapters in float, then serve with --quantize.")
    require(0.0 <= config.loss.label_smoothing < 1.0, "config.loss.label_smoothing must be in [0, 1).")
    require(config.tokenizer.vocab_size >= 64, "config.tokenizer.vocab_size must be at least 64.")
    require(isinstance(config.tokenizer.extra_ids, int) and config.tokenizer.extra_ids >= 0,
            "config.tokenizer.extra_ids must be >= 0 (T5 uses 100 sentinels).")
    profile = parse_profile_steps(config.profile_steps)
    require(profile is None or profile[1] <= config.num_train_steps,
            f"config.profile_steps={config.profile_steps!r} ends after config.num_train_steps="
            f"{config.num_train_steps}; choose a range inside the run.")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        automatic = axis == "fsdp" and size == 0
        require(isinstance(size, int) and (size > 0 or size == -1 or automatic),
                f"config.mesh.{axis}={size!r}: use a positive size, or -1 for the remaining devices"
                f"{' (or 0 = automatic)' if axis == 'fsdp' else ''}.")
    require([config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) <= 1,
            "at most one of config.mesh.data/fsdp/tensor may be -1.")
    validate_distill(config.distill, config.loss, require)
    validate_lora(config, require)


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """config.profile_steps "START:END" -> (START, END); "" -> None (no trace).

    The trace covers the steps after step START up to and including step END ("10:15": steps 11 to 15).
    """
    if not isinstance(text, str):
        raise SoraError(f"config.profile_steps={text!r} must be a string like \"10:15\" (or \"\" for none).")
    if not text.strip():
        return None
    start, sep, end = text.partition(":")
    try:
        bounds = int(start), int(end)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] < bounds[1]:
        raise SoraError(f"config.profile_steps={text!r} is not a step range; use \"START:END\" with "
                        "0 <= START < END, e.g. \"10:15\" traces steps 11 to 15 (\"\" = no trace).")
    return bounds



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
    require(lora.base_quantization in ("", *SCHEMES),
            f"config.lora.base_quantization={lora.base_quantization!r}: use one of {', '.join(SCHEMES)} "
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
