"""A trained run rebuilt from its directory on this machine's devices: what eval, predict and export load.

    run = load_workdir("runs/default")                       # newest readable checkpoint
    run = load_workdir("gs://bucket/runs/x", {"data.max_input_length": 256}, step=400)
    run = load_workdir("runs/default", step="best")          # the params kept for the best validation
    run = load_workdir("runs/default", quantize="int8")      # int8 weights (PTQ), for eval and inference
    run = load_workdir("exports/int8")                       # a quantized export (sora-export --quantize)

Parameters are restored only after the saved shapes were checked against the config, so a config that no longer
matches, a missing step or a workdir without checkpoints are one-line `SoraError`s raised before any compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from sora_jax import checkpoint, sharding
from sora_jax import config as config_lib
from sora_jax.compression import lora
from sora_jax.data import tasks
from sora_jax.data.options import DataOptions
from sora_jax.data.tasks import Task
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder, ModelConfig
from sora_jax.model import params as params_lib
from sora_jax.workdir import quantized
from sora_jax.workdir.directory import BEST, Workdir


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A trained run, rebuilt on this machine's devices: everything eval and inference need."""

    workdir: Workdir
    config: ml_collections.ConfigDict  # The saved config with the overrides applied.
    task: Task
    tokenizer: Tokenizer
    model_config: ModelConfig
    model: EncoderDecoder  # The model decoding runs: the quantized one when `quantization` is set.
    mesh: jax.sharding.Mesh
    rules: tuple
    abstract_params: Any  # The float params' ShapeDtypeStructs carrying their target shardings.
    param_shardings: Any  # Those of `params` (the quantized layout when `quantization` is set).
    steps: tuple[int, ...]  # Every committed checkpoint step, oldest first.
    params: Any  # Those of `step` (None when loaded with restore=False).
    step: int | None
    from_best: bool = False  # The params came from <workdir>/best (their training step is `step`).
    notes: tuple[str, ...] = ()  # Things worth telling the user (a mesh fallback, a skipped checkpoint).
    quantization: str = ""  # "int8" / "int4": `model` and `params` have quantized weights; "" = float.
    exported: bool = False  # Read from a quantized export (one step, params already quantized).
    # A LoRA run (config.lora.rank > 0) saves base and adapters: restored with these abstract params, then merged
    # (W + alpha / rank * A @ B), so that `model` and `params` are a plain model's. None for other runs.
    saved_abstract_params: Any = None

    def _restore_target(self) -> Any:
        return self.abstract_params if self.saved_abstract_params is None else self.saved_abstract_params

    def _merged(self, params: Any) -> Any:
        if self.saved_abstract_params is None:
            return params
        float_shardings = jax.tree.map(lambda leaf: leaf.sharding, self.abstract_params)
        return jax.device_put(lora.merge_lora(params, alpha=self.config.lora.alpha), float_shardings)

    def with_step(self, step: int | str | None) -> LoadedRun:
        """The same run with the params of checkpoint `step` (None: the newest readable one) or of "best";
        quantized when the run was loaded with `quantize`."""
        if self.exported:
            params = quantized.restore_export(self.workdir.path, self.model, self.param_shardings, self.mesh)
            return dataclasses.replace(self, params=params, step=self.steps[0], notes=self.notes + (
                quantized.bytes_note(self.quantization, self.abstract_params, params),))
        run = self._with_float_step(step)
        if not self.quantization:
            return run
        params = quantized.quantize_params(EncoderDecoder(self.model_config), self.model, run.params,
                                           self.param_shardings)
        return dataclasses.replace(run, params=params, notes=run.notes + (
            quantized.bytes_note(self.quantization, run.params, params),))

    def _with_float_step(self, step: int | str | None) -> LoadedRun:
        if step == BEST:
            params, step = checkpoint.BestCheckpoint.restore_params(self.workdir.best_dir, self._restore_target())
            return dataclasses.replace(self, params=self._merged(params), step=step, from_best=True)
        with checkpoint.quiet_orbax():
            ckpt = checkpoint.Checkpointer(self.workdir.checkpoint_dir, keep=self.config.keep_checkpoints)
            try:
                params, step = ckpt.restore_params(self._restore_target(), step)
            finally:
                ckpt.close()
        return dataclasses.replace(self, params=self._merged(params), step=step, from_best=False,
                                   notes=self.notes + tuple(ckpt.notes))

    def check_shapes(self, step: int | str) -> None:
        """A SoraError when checkpoint `step`'s (or best's) params do not have this config's shapes, or when
        there is no best checkpoint (reads metadata only). An export's params are checked as they are read."""
        if self.exported:
            return
        if step == BEST:
            _, params_dir = checkpoint.BestCheckpoint.saved(self.workdir.best_dir)
            checkpoint.check_param_shapes(params_dir, self._restore_target(), key=None)
        else:
            checkpoint.check_param_shapes(self.workdir.checkpoint_dir / str(step) / "state", self._restore_target())

    def activate(self) -> contextlib.AbstractContextManager:
        """The mesh and logical-axis rules, current (needed while tracing the model's sharding constraints)."""
        return sharding.activate(self.mesh, self.rules)

    def make_builder(self) -> Any:
        """The task's prepared TFDS builder (prepares it if needed, as training does)."""
        return self.task.make_builder(str(self.workdir.data_dir(self.config.data.data_dir)),
                                      DataOptions.from_config(self.config.data).all_task_options)

    @property
    def data_parallel_size(self) -> int:
        return sharding.data_parallel_size(self.mesh)


def _mesh(config: ml_collections.ConfigDict) -> tuple[jax.sharding.Mesh, list[str]]:
    """The saved mesh over this machine's devices; if it does not fit them, pure data parallelism."""
    try:
        return sharding.mesh_from_config(config.mesh), []
    except SoraError as e:
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        return mesh, [f"the saved mesh does not fit this machine ({e}); using data={mesh.shape['data']} "
                      "(pure data parallelism) instead."]


def checkpoint_steps(workdir: Workdir, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The committed checkpoint steps (a SoraError when there are none)."""
    steps: list[int] = []
    if workdir.checkpoint_dir.is_dir():  # Checked first: the checkpoint manager would create the directory.
        with checkpoint.quiet_orbax():
            ckpt = checkpoint.Checkpointer(workdir.checkpoint_dir, keep=config.keep_checkpoints)
            try:
                steps = ckpt.steps()
            finally:
                ckpt.close()
    if not steps:
        raise SoraError(f"no checkpoint in {workdir.checkpoint_dir}: train first (train.py --workdir={workdir}), "
                        "or point --workdir at a trained run.")
    return tuple(steps)


def _export_scheme(workdir: Workdir, quantize: str, step: int | str | None) -> tuple[dict[str, Any] | None, str]:
    """(the export manifest or None, the scheme to serve): `quantize` checked, and against an export's own."""
    if quantize:
        quantized.check_scheme(quantize)
    manifest = quantized.read_manifest(workdir.path)
    if manifest is None:
        return None, quantize
    if quantize and quantize != manifest["scheme"]:
        raise SoraError(f"{workdir} is a quantized export with {manifest['scheme']} weights; it cannot be served "
                        f"with --quantize={quantize}: drop --quantize, or export the training run again with "
                        f"--quantize={quantize}.")
    if step is not None and step != manifest["step"]:
        raise SoraError(f"{workdir} is a quantized export of step {manifest['step']} only; drop --step.")
    return manifest, manifest["scheme"]


def load_workdir(workdir: str | Workdir, overrides: Mapping[str, Any] | None = None,
                 step: int | str | None = None, *, restore: bool = True, quantize: str = "") -> LoadedRun:
    """Rebuild the run saved in `workdir` and restore the params of checkpoint `step` (default: the newest
    readable one; "best": those training kept for its best validation metric).

    `overrides` are config keys with values (Python values or command-line text), applied on top of the saved
    config.json. The mesh is the saved one when it fits this machine's devices, else data parallelism over all
    of them. With restore=False, params and step are None (see `LoadedRun.with_step`). `quantize` ("int8",
    "int4"; "" = float) serves the params with quantized weights (PTQ); a quantized export (see
    `workdir.quantized`) is served with its own scheme.
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    manifest, quantize = _export_scheme(workdir, quantize, step)
    config, notes = workdir.load_config(overrides)
    tokenizer = workdir.load_tokenizer(config)
    mixed = [entry["task"] for entry in config.data.mixture]
    if mixed and config.data.task not in mixed and config.data.task == config_lib.base_config().data.task:
        # A mixture run serves and evaluates one of its tasks at a time (each has its own input format); the
        # schema's default task is not a choice the user made.
        notes.append(f"this run trained on a mixture of {', '.join(mixed)}; using its task {mixed[0]} (choose "
                     "another with --config.data.task=NAME)")
        config.data.task = mixed[0]
    task = tasks.from_options(DataOptions.from_config(config.data))
    model_config = config_lib.resolve_model_config(config.model, tokenizer.vocab_size)
    mesh, mesh_notes = _mesh(config)
    rules = sharding.check_rules(config.mesh.logical_axis_rules)
    steps = (manifest["step"],) if manifest else checkpoint_steps(workdir, config)
    if step not in (None, BEST, *steps):
        raise SoraError(f"there is no checkpoint step {step} in {workdir.checkpoint_dir}; available: "
                        f"{', '.join(map(str, steps))}.")
    model = EncoderDecoder(model_config)
    abstract_params, param_shardings = params_lib.abstract_params(params_lib.init_fn(model), mesh, rules)
    saved_abstract = None
    if config.lora.rank:
        adapted = lora.configured_lora_model(model, config.lora)
        saved_abstract, _ = params_lib.abstract_params(params_lib.init_fn(adapted), mesh, rules)
    if quantize:
        model, param_shardings = quantized.serving_layout(model, param_shardings, mesh, quantize)
    elif config.quantization.qat:
        notes.append(f"this run was trained for {config.quantization.qat} (config.quantization.qat); pass "
                     f"--quantize={config.quantization.qat} to serve it with {config.quantization.qat} weights.")
    run = LoadedRun(workdir=workdir, config=config, task=task, tokenizer=tokenizer, model_config=model_config,
                    model=model, mesh=mesh, rules=rules, abstract_params=abstract_params,
                    param_shardings=param_shardings, steps=steps, params=None, step=None,
                    notes=tuple(notes + mesh_notes), quantization=quantize, exported=manifest is not None,
                    saved_abstract_params=saved_abstract)
    run.check_shapes(steps[-1] if step is None else step)
    return run.with_step(step) if restore else run
