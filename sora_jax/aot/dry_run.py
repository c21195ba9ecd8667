"""`train.py --dry_run --topology=NAME [--num_slices=N] [--aot_out=DIR]`: the dry run for a TPU slice (or NVIDIA
GPUs) that is not attached, compiled by the real compiler (libtpu; XLA's GPU compiler) on whatever machine runs it."""

from __future__ import annotations

from typing import Any

import ml_collections

from sora_jax.aot import compile as compile_lib
from sora_jax.aot import gpu, report, topology
from sora_jax.errors import SoraError
from sora_jax.training import dry_run as dry_run_lib
from sora_jax.training import executable, oom


def dry_run_on_topology(config: ml_collections.ConfigDict, name: str, num_slices: int = 1, data_dir: str = "",
                        aot_out: str = "", decode: bool = True) -> dict[str, Any]:
    """Print the state's shardings, then compile the train step (and the evaluation decode step) for the slice
    `name` and print what each needs per chip; save the train step to `aot_out` when given. Returns the figures."""
    cards = gpu.resolve(name)
    if cards is not None:
        if num_slices != 1 or aot_out:
            raise SoraError("--num_slices and --aot_out are for TPU slices; a GPU --topology reports memory only.")
        return _on_gpus(config, cards, data_dir)
    target = topology.resolve(name, num_slices)
    mesh = compile_lib.target_mesh(config.mesh, topology.devices(target), target.num_slices)
    inputs = dry_run_lib.step_inputs(config, mesh, data_dir)
    result: dict[str, Any] = dict(dry_run_lib.dry_run(config, inputs=inputs, compile_step=False))
    train = compile_lib.compile_train_step(inputs)
    result.update(report.train_report(target, inputs, train.executable, train.seconds,
                                             train.assigned_temp_bytes))
    if decode:
        step = compile_lib.compile_decode_step(inputs)
        result["decode_memory"] = report.decode_report(step.executable, step.seconds, target.chip.hbm_bytes,
                                                       inputs.config.data.eval_batch_size,
                                                       inputs.config.data.max_target_length)
    if aot_out:
        manifest = executable.Manifest.for_run(inputs.config, mesh, topology=target.describe())
        path = executable.save(train.executable, aot_out, manifest)
        print(f"saved the compiled train step to {path}; on {target.name} run train.py with the same config and "
              f"--aot_in={path} to skip compiling")
    return result


def _on_gpus(config: ml_collections.ConfigDict, target: gpu.GpuTarget, data_dir: str) -> dict[str, Any]:
    devices, card_bytes = gpu.devices(target)
    mesh = compile_lib.target_mesh(config.mesh, devices)
    inputs = dry_run_lib.step_inputs(config, mesh, data_dir)
    result: dict[str, Any] = dict(dry_run_lib.dry_run(config, inputs=inputs, compile_step=False))
    train = compile_lib.compile_train_step(inputs)
    memory = report.Memory.of(train.executable, card_bytes)
    print(f"train step compiled for {target.describe()} in {train.seconds:.0f} s; per device, from XLA's GPU "
          f"compiler (memory only: it reports no FLOPs and does not itself refuse a program larger than the card): "
          f"{memory.line()}")
    if memory.headroom < 0:
        raise SoraError(f"the train step does not fit in a {target.card}'s memory: it needs "
                        f"{memory.total / 2**30:.2f} GiB per device and the card has {card_bytes / 2**30:.2f} GiB; "
                        f"{oom.FIXES}.")
    result["memory"] = memory
    return result
