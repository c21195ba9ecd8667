"""`train.py --dry_run --topology=NAME [--num_slices=N] [--aot_out=DIR]`: the dry run for a TPU slice that is not
attached, compiled by the real TPU compiler (libtpu) on whatever machine runs it."""

from __future__ import annotations

from typing import Any

import ml_collections

from sora_jax.aot import compile as compile_lib
from sora_jax.aot import report, topology
from sora_jax.training import dry_run as dry_run_lib
from sora_jax.training import executable


def dry_run_on_topology(config: ml_collections.ConfigDict, name: str, num_slices: int = 1, data_dir: str = "",
                        aot_out: str = "", decode: bool = True) -> dict[str, Any]:
    """Print the state's shardings, then compile the train step (and the evaluation decode step) for the slice
    `name` and print what each needs per chip; save the train step to `aot_out` when given. Returns the figures."""
    target = topology.resolve(name, num_slices)
    mesh = compile_lib.target_mesh(config.mesh, target, topology.devices(target))
    inputs = dry_run_lib.step_inputs(config, mesh, data_dir)
    result: dict[str, Any] = dict(dry_run_lib.dry_run(config, inputs=inputs, compile_step=False))
    train = compile_lib.compile_train_step(inputs)
    result.update(report.train_report(target, inputs, train.executable, train.seconds))
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
