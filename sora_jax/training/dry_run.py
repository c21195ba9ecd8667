"""`train.py --dry_run`: what a config would put on each device, without training or checkpoints.

No data is read, except for a mixture (config.data.mixture): its tasks are prepared in the data dir so that
the table shows each task's training examples and rate (proportional rates need the counts).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from sora_jax import config as config_lib
from sora_jax import sharding
from sora_jax.config import VOCAB_MULTIPLE, resolve_model_config
from sora_jax.data import mixture
from sora_jax.data.options import DataOptions
from sora_jax.data.pipeline import BATCH_KEYS
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.errors import SoraError
from sora_jax.model import params as params_lib
from sora_jax.training import flops, pretrained
from sora_jax.training import state as state_lib
from sora_jax.training import step as step_lib
from sora_jax.training import teacher as teacher_lib


def _vocab_size(config: ml_collections.ConfigDict) -> int:
    # No data is read: the vocabulary is the configured tokenizer's, or the size a new one is trained to.
    if config.tokenizer.model_path:
        return Tokenizer.load(config.tokenizer.model_path, extra_ids=config.tokenizer.extra_ids).vocab_size
    return config.tokenizer.vocab_size + config.tokenizer.extra_ids


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.3f} GiB"


@dataclasses.dataclass
class StepInputs:
    """What compiling the train step needs: the resolved config, mesh, setup and abstract arguments."""

    config: ml_collections.ConfigDict  # resolved: init_from's architecture applied
    model_config: Any
    mesh: jax.sharding.Mesh
    rules: Any
    setup: state_lib.TrainingSetup
    teacher: Any
    arguments: tuple  # (abstract state, abstract batch[, teacher params]): ShapeDtypeStructs with shardings

    def compile(self, compiler_options: dict[str, str] | None = None) -> Any:
        """Lower and compile the train step for the mesh's devices (local, or a TPU topology's)."""
        with sharding.activate(self.mesh, self.rules):
            step = step_lib.compile_train_step(self.setup, step_lib.StepOptions.from_config(self.config), self.mesh,
                                               self.teacher)
            return step.lower(*self.arguments).compile(compiler_options=compiler_options)


def step_inputs(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
                data_dir: str = "") -> StepInputs:
    """Resolve `config` and build the abstract train state and batch on `mesh` (default: config.mesh over the local
    devices); nothing is allocated. `data_dir`: where a mixture's tasks are prepared (they are described)."""
    config_lib.validate(config)
    if not (config.data.max_input_length and config.data.max_target_length):
        raise SoraError("config.data max lengths of 0 are read off the training data, which --dry_run does not "
                        "open: pass them, e.g. --config.data.max_input_length=128 --config.data.max_target_length=8.")
    config = config.copy_and_resolve_references()  # The architecture and tokenizer of init_from and the teacher.
    if config.init_from:
        pretrained.apply_pretrained_architecture(config)
        pretrained.check_source(config.init_from)
    teacher_config = teacher_lib.resolve_teacher(config)
    if config.data.mixture:
        _print_mixture(config, config.data.data_dir or data_dir)
    mesh = sharding.mesh_from_config(config.mesh) if mesh is None else mesh
    rules = sharding.check_rules(config.mesh.logical_axis_rules)
    model_config = resolve_model_config(config.model, _vocab_size(config))
    setup = state_lib.build_training_setup(config, model_config, mesh, rules)
    teacher = (teacher_lib.teacher_setup(config.distill, teacher_config, model_config, mesh, rules)
               if teacher_config is not None else None)
    batch_spec = sharding.batch_sharding(mesh)
    lengths = {"encoder": config.data.max_input_length, "decoder": config.data.max_target_length}
    abstract_batch = {k: jax.ShapeDtypeStruct((config.batch_size, lengths[k.split("_")[0]]), np.int32,
                                              sharding=batch_spec) for k in BATCH_KEYS}
    arguments = (setup.abstract_state, abstract_batch) + (() if teacher is None else (teacher.abstract_params,))
    return StepInputs(config, model_config, mesh, rules, setup, teacher, arguments)


def dry_run(config: ml_collections.ConfigDict, data_dir: str = "", mesh: jax.sharding.Mesh | None = None,
            inputs: StepInputs | None = None, compile_step: bool = True) -> dict[str, int]:
    """Print the mixture (if any), the mesh, every parameter's shape and PartitionSpec, per-device state bytes
    and the compiled train step's memory analysis; return the byte counts (for tests). `data_dir` is where a
    mixture's tasks are prepared when config.data.data_dir is empty. `mesh`: another mesh than config.mesh over the
    local devices (e.g. over a TPU topology's devices); `inputs`: already built by `step_inputs`; compile_step=False
    stops after the state (sora_jax.aot compiles and reports a TPU topology's step itself)."""
    inputs = step_inputs(config, mesh, data_dir) if inputs is None else inputs
    config, model_config, mesh, setup, teacher = (inputs.config, inputs.model_config, inputs.mesh, inputs.setup,
                                                  inputs.teacher)
    abstract = setup.abstract_state
    print(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} {mesh.devices.flat[0].device_kind} device(s), "
          f"{len({d.process_index for d in mesh.devices.flat})} process(es)")
    print(f"model: preset {config.model.preset}, vocab {model_config.vocab_size} (padded to a multiple of "
          f"{VOCAB_MULTIPLE}), dtype {model_config.dtype}, params {model_config.param_dtype}")
    print(f"{'parameter':<58} {'shape':<20} {'dtype':<9} partition")
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        print(f"{name:<58} {str(leaf.shape):<20} {str(leaf.dtype):<9} {leaf.sharding.spec}")
    num_params = params_lib.count(abstract.params)
    param_bytes = params_lib.tree_bytes(abstract.params, per_device=True)
    opt_bytes = params_lib.tree_bytes(abstract.opt_state, per_device=True)
    print(f"parameters: {num_params:,} | per device: params {_gib(param_bytes)}, optimizer state "
          f"{_gib(opt_bytes)} ({config.optimizer.name})")
    result = {"params": num_params, "param_bytes_per_device": param_bytes, "opt_bytes_per_device": opt_bytes}
    if setup.trainable is not None:
        result.update(_lora_summary(config, model_config, mesh, inputs.rules, setup, opt_bytes))
    if teacher is not None:
        teacher_bytes = params_lib.tree_bytes(teacher.abstract_params, per_device=True)
        print(f"teacher {teacher.spec}: {params_lib.count(teacher.abstract_params):,} parameters, "
              f"{_gib(teacher_bytes)} per device (not trained, no optimizer state)")
        result["teacher_param_bytes_per_device"] = teacher_bytes
    if not compile_step:
        return result
    compiled = inputs.compile()
    memory = compiled.memory_analysis()
    if memory is not None:
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes")
        shown = ", ".join(f"{f.removesuffix('_size_in_bytes')} {_gib(getattr(memory, f))}" for f in fields)
        print(f"compiled train step, per device: {shown}")
        result["temp_bytes_per_device"] = memory.temp_size_in_bytes
    print(f"batch: {config.batch_size} rows x ({config.data.max_input_length} + {config.data.max_target_length}) "
          f"tokens, {config.batch_size // sharding.data_parallel_size(mesh)} rows per data-parallel shard")
    result["flops_per_step"] = _print_flops(config, model_config, mesh)
    return result


def _print_mixture(config: ml_collections.ConfigDict, data_dir: str) -> None:
    if not data_dir:
        raise SoraError("a --dry_run of a mixture prepares its tasks: set config.data.data_dir (or --workdir).")
    components = mixture.open_components(DataOptions.from_config(config.data), data_dir)
    print(f"mixture of {len(components)} tasks ({config.data.mixture_rate} rates), data in {data_dir}:")
    for line in mixture.describe(components):
        print(line)


def _lora_summary(config: ml_collections.ConfigDict, model_config: Any, mesh: jax.sharding.Mesh, rules: Any,
                  setup: state_lib.TrainingSetup, opt_bytes: int) -> dict[str, int]:
    # The same config without adapters: what full fine-tuning would keep per device.
    full_config = config.copy_and_resolve_references()
    full_config.lora.rank = 0
    full = state_lib.build_training_setup(full_config, model_config, mesh, rules).abstract_state
    trainable = params_lib.count(setup.trainable(setup.abstract_state.params)[0])
    full_bytes = params_lib.tree_bytes(full.opt_state, per_device=True)
    print(f"LoRA rank {config.lora.rank} on {', '.join(config.lora.targets)}: trains {trainable:,} of "
          f"{params_lib.count(setup.abstract_state.params):,} parameters; optimizer state per device "
          f"{opt_bytes:,} bytes vs {full_bytes:,} for full fine-tuning ({opt_bytes / full_bytes:.1%})")
    float_bytes = params_lib.tree_bytes(full.params, per_device=True)
    if config.lora.base_quantization:
        param_bytes = params_lib.tree_bytes(setup.abstract_state.params, per_device=True)
        print(f"QLoRA: the frozen base stored {config.lora.base_quantization}; params per device {param_bytes:,} "
              f"bytes (adapters included) vs {float_bytes:,} for the float model alone "
              f"({param_bytes / float_bytes:.1%})")
    return {"trainable_params": trainable, "full_opt_bytes_per_device": full_bytes,
            "full_params": params_lib.count(full.params), "full_param_bytes_per_device": float_bytes}


def _print_flops(config: ml_collections.ConfigDict, model_config: Any, mesh: jax.sharding.Mesh) -> float:
    step = flops.train_step_flops(model_config, config.batch_size, config.data.max_input_length,
                                  config.data.max_target_length, config.grad_accum_steps)
    parts = ", ".join(f"{name.replace('_', ' ')} {getattr(step, name) / step.forward:.0%}" for name in
                      ("encoder_weights", "decoder_weights", "cross_kv", "lm_head", "attention"))
    amount = f"{step.total / 1e12:,.2f} TFLOP" if step.total >= 1e12 else f"{step.total / 1e9:,.2f} GFLOP"
    print(f"FLOPs per train step: {amount} (3 x forward; forward: {parts})")
    kind = mesh.devices.flat[0].device_kind
    peak = flops.peak_tflops(kind)
    if peak is not None:
        floor_ms = step.total / (mesh.devices.size * peak * 1e12) * 1e3
        print(f"at the {kind} peak of {peak:g} TFLOP/s per device: {floor_ms:.2f} ms per step at 100 % MFU")
    return step.total
