"""A compiled train step saved to disk and loaded back instead of compiling: `--dry_run --topology=NAME
--aot_out=DIR` writes it, `train.py --aot_in=DIR` runs it.

An executable runs only where it was compiled for: the same jax, jaxlib and libtpu, the same kind and number of
devices and slices, the same mesh, and a config that compiles to the same step. The manifest records each; a
run whose values differ is refused in one line naming the first difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import pickle
from typing import Any

import jax
import ml_collections
from etils import epath
from jax.experimental import serialize_executable

from sora_jax.errors import SoraError

MANIFEST, PAYLOAD = "manifest.json", "executable.pkl"
# The run-config keys the compiled train step depends on (the model, the optimizer and its schedule, the loss, the
# batch and its lengths, the mesh, adapters, quantization, distillation, the dropout RNG). Logging, evaluation and
# checkpoint settings are left out: changing them does not need a new executable.
STEP_KEYS = ("model", "optimizer", "loss", "mesh", "lora", "quantization", "distill", "batch_size",
             "grad_accum_steps", "num_train_steps", "rng_impl", "data.max_input_length", "data.max_target_length",
             "tokenizer.model_path", "tokenizer.vocab_size", "tokenizer.extra_ids", "init_from")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def step_fingerprint(config: ml_collections.ConfigDict) -> str:
    """A short hash of the config keys the compiled train step depends on (STEP_KEYS)."""
    picked = {}
    for key in STEP_KEYS:
        value: Any = config
        for part in key.split("."):
            value = value[part] if part in value else None
            if value is None:
                break
        picked[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Where a compiled step can run. `topology` is informative (the name it was compiled for); the devices,
    slices and mesh are what is compared."""

    config: str  # step_fingerprint of the run config
    mesh: str  # e.g. "data=1,fsdp=4,tensor=1"
    device_kind: str
    num_devices: int
    num_slices: int
    platform: str
    jax: str = dataclasses.field(default_factory=lambda: jax.__version__)
    jaxlib: str = dataclasses.field(default_factory=lambda: _version("jaxlib"))
    libtpu: str = dataclasses.field(default_factory=lambda: _version("libtpu"))
    topology: str = ""

    @classmethod
    def for_run(cls, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, topology: str = "") -> Manifest:
        """The manifest of `config`'s train step on `mesh` (its devices: local ones, or a TPU topology's)."""
        devices = list(mesh.devices.flat)
        return cls(config=step_fingerprint(config), mesh=",".join(f"{k}={v}" for k, v in mesh.shape.items()),
                   device_kind=devices[0].device_kind, num_devices=len(devices),
                   num_slices=len({getattr(d, "slice_index", 0) for d in devices}), platform=devices[0].platform,
                   topology=topology)

    def mismatch(self, other: Manifest) -> str | None:
        """'libtpu 0.0.50.1 (this run 0.0.51)' for the first field that differs (topology ignored), else None."""
        for field in dataclasses.fields(self):
            if field.name == "topology":
                continue
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if mine != theirs:
                what = "the step's config keys (model, optimizer, batch, lengths, mesh...)" if field.name == "config" \
                    else field.name
                return f"{what} {mine} (this run: {theirs})"
        return None


def save(compiled: Any, directory: str, manifest: Manifest) -> epath.Path:
    """Write `compiled` (a jax Compiled) and its manifest into `directory`; returns the directory."""
    path = epath.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    payload, in_tree, out_tree = serialize_executable.serialize(compiled)
    (path / PAYLOAD).write_bytes(pickle.dumps((payload, in_tree, out_tree)))
    (path / MANIFEST).write_text(json.dumps(dataclasses.asdict(manifest), indent=1) + "\n")
    return path


def read_manifest(directory: str) -> Manifest:
    """The manifest saved in `directory`; SoraError when there is none."""
    path = epath.Path(directory) / MANIFEST
    if not path.exists():
        raise SoraError(f"--aot_in {directory} holds no compiled step ({MANIFEST} is missing); write one with "
                        "train.py --dry_run --topology=NAME --aot_out=DIR.")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (TypeError, ValueError) as e:
        raise SoraError(f"{path} is not a manifest this Sora writes ({e}); compile the step again.") from None


def load(directory: str, expected: Manifest, mesh: jax.sharding.Mesh) -> Any:
    """The compiled step saved in `directory`, loaded onto `mesh`'s devices, when its manifest matches `expected`;
    otherwise SoraError naming the first difference. Returns a callable like the jitted step."""
    saved = read_manifest(directory)
    different = saved.mismatch(expected)
    if different is not None:
        raise SoraError(f"the compiled step in {directory} was made for {different}; it runs only where jax, "
                        "jaxlib, libtpu, the devices, the mesh and the step's config match: compile it again with "
                        "--dry_run --topology=NAME --aot_out, or leave --aot_in out.")
    payload, in_tree, out_tree = pickle.loads((epath.Path(directory) / PAYLOAD).read_bytes())
    # The mesh's devices in its order: the executable's device assignment (jit's, for shardings on this mesh).
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                     execution_devices=list(mesh.devices.flat))
