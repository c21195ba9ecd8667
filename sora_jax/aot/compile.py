"""Compile Sora's train step and its evaluation decode step for a TPU slice that is not attached.

The mesh is config.mesh laid over the topology's devices (its physical axes, and the dcn_* axes across slices); the
arguments are ShapeDtypeStructs carrying their shardings, so nothing is allocated and the real TPU compiler runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sora_jax import sharding
from sora_jax.decoding.generator import Generator
from sora_jax.decoding.search import DecodeOptions
from sora_jax.errors import SoraError
from sora_jax.training import oom
from sora_jax.training.dry_run import StepInputs


def target_mesh(mesh_config: Any, devices: list[Any], num_slices: int = 1) -> Mesh:
    """config.mesh over `devices`. fsdp=0 (automatic) is what a run on the slice would pick: the chips of one host
    when the slice has several hosts, else 1. Several slices with every dcn_* at 1 split the first of data, fsdp
    and tensor that divides over them (data parallelism across slices when it can, as a pod user would)."""
    sizes = {a: mesh_config[a] for a in sharding.MESH_AXES}
    dcn = {a: mesh_config[f"dcn_{a}"] for a in sharding.MESH_AXES}
    if sizes["fsdp"] == 0:
        hosts = len({d.process_index for d in devices})
        sizes["fsdp"] = len(devices) // hosts if hosts > 1 else 1
    if num_slices > 1 and math.prod(dcn.values()) == 1:
        shape = dict(zip(sharding.MESH_AXES, sharding.resolve_mesh_shape(sizes, len(devices)), strict=True))
        axis = next((a for a in ("data", "fsdp", "tensor") if shape[a] % num_slices == 0), "data")
        dcn[axis] = num_slices
        print(f"note: config.mesh.dcn_* are all 1; the {num_slices} slices split mesh axis {axis!r} "
              f"(set config.mesh.dcn_{axis} or another dcn_* to choose)")
    return sharding.make_mesh(sizes, devices, dcn=dcn)


@dataclasses.dataclass
class Compiled:
    """A compiled program, how long the compiler took, and the HBM its buffer assignment reserves for temporaries
    (None when not read)."""

    executable: Any  # jax.stages.Compiled
    seconds: float
    assigned_temp_bytes: int | None = None


def _compile(lowerable: Any, arguments: tuple, what: str, device_kind: str) -> Compiled:
    started = time.perf_counter()
    try:
        executable = lowerable(*arguments)
    except Exception as e:  # noqa: BLE001 - the TPU compiler's out-of-memory is a JaxRuntimeError
        if oom.is_oom(e):
            raise SoraError(oom.message(e, what, device_kind)) from None
        raise
    return Compiled(executable, time.perf_counter() - started)


def assigned_temp_bytes(dump_dir: str) -> int | None:
    """The HBM (memory space 0) temporary allocation in the buffer assignment XLA dumped into `dump_dir`.

    On TPU, memory_analysis' temp figure exceeded this (by about 40 %, and beyond the chip's HBM for programs the
    compiler accepted), so the report reads the allocation the executable actually reserves."""
    sizes = []
    for path in Path(dump_dir).glob("*after_optimizations-buffer-assignment.txt"):
        with path.open() as f:
            for line in f:
                found = re.match(r"allocation \d+: size (\d+), (?!color)[^\n]*preallocated-temp", line)
                if found:
                    sizes.append(int(found.group(1)))
    return sum(sizes) if sizes else None


def compile_train_step(inputs: StepInputs) -> Compiled:
    """The train step of `inputs` compiled for its mesh's devices; an out-of-memory is one SoraError line. For TPU
    targets the buffer assignment is dumped to a scratch folder and its temporary allocation read back."""
    kind = inputs.mesh.devices.flat[0].device_kind
    if inputs.mesh.devices.flat[0].platform != "tpu":
        return _compile(lambda *_: inputs.compile(), (), "the train step", kind)
    with tempfile.TemporaryDirectory(prefix="sora_aot_") as dump:
        options = {"xla_dump_to": dump, "xla_dump_hlo_pass_re": "NONE", "xla_dump_hlo_module_re": "jit_train_step"}
        compiled = _compile(lambda *_: inputs.compile(options), (), "the train step", kind)
        compiled.assigned_temp_bytes = assigned_temp_bytes(dump)
    return compiled


def decode_options(config: ml_collections.ConfigDict) -> DecodeOptions:
    """What training's evaluation decodes with by default: greedy up to max_target_length."""
    return DecodeOptions(method="greedy", max_length=config.data.max_target_length)


def compile_decode_step(inputs: StepInputs, options: DecodeOptions | None = None) -> Compiled:
    """The evaluation decode (config.data.eval_batch_size rows of max_input_length) compiled on the same mesh."""
    config, mesh = inputs.config, inputs.mesh
    options = decode_options(config) if options is None else options
    params = inputs.setup.abstract_state.params
    generator = Generator(inputs.setup.model, inputs.setup.state_shardings.params, mesh)
    tokens = jax.ShapeDtypeStruct((config.data.eval_batch_size, config.data.max_input_length), np.int32,
                                  sharding=sharding.batch_sharding(mesh))
    rng = jax.eval_shape(lambda: jax.random.key(0))
    kind = mesh.devices.flat[0].device_kind

    def lower_and_compile() -> Any:
        with sharding.activate(mesh, inputs.rules):
            return generator.jitted(options).lower(params, tokens, rng).compile()

    return _compile(lambda *_: lower_and_compile(), (), "the decode step", kind)
