"""Device mesh and logical-axis partitioning: the only place that knows mesh axis names.

Model code names logical axes ("batch", "embed", "mlp", ...); a rules table maps them onto the mesh axes
("data", "fsdp", "tensor"). Everything that places arrays (state, batches) goes through these functions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sora_jax.errors import SoraError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "kv_heads", "vocab", "relpos_buckets", "layers")


def resolve_mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Fill a -1 axis with the remaining devices and check that the product equals the device count."""
    shape = [sizes[a] for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in shape):
        raise SoraError(f"mesh sizes {dict(zip(MESH_AXES, shape, strict=True))} must be positive, or -1 for the "
                        "remaining devices.")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise SoraError(
                f"config.mesh {dict(zip(MESH_AXES, shape, strict=True))} cannot fill {num_devices} devices: "
                f"{num_devices} is not divisible by {known}. Choose axis sizes whose product divides it.")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise SoraError(
            f"config.mesh data*fsdp*tensor = {'*'.join(map(str, shape))} = {math.prod(shape)} but there are "
            f"{num_devices} devices; set the sizes so that their product is {num_devices} (or use -1 for one axis).")
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None,
              dcn: dict[str, int] | None = None) -> Mesh:
    """Build the (data, fsdp, tensor) mesh over all devices, with Auto axis types for sharding constraints.

    `sizes` are the whole mesh's axis sizes. With several TPU slices, `dcn` says how many slices each axis
    spans (across the data-center network); the rest of each axis stays inside a slice (fast ICI links).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(sizes, len(devices))
    dcn_shape = tuple((dcn or {}).get(a, 1) for a in MESH_AXES)
    if math.prod(dcn_shape) > 1:
        if any(size % d for size, d in zip(shape, dcn_shape, strict=True)):
            raise SoraError(f"config.mesh.dcn_* {dict(zip(MESH_AXES, dcn_shape, strict=True))} must divide the "
                            f"mesh axes {dict(zip(MESH_AXES, shape, strict=True))}.")
        slices = len({getattr(d, "slice_index", 0) for d in devices})
        if slices != math.prod(dcn_shape):
            raise SoraError(f"config.mesh.dcn_* spans {math.prod(dcn_shape)} slices but the devices come from "
                            f"{slices}; set the dcn sizes so that their product is the number of slices.")
        ici_shape = tuple(size // d for size, d in zip(shape, dcn_shape, strict=True))
        device_array = _physical_mesh(mesh_utils.create_hybrid_device_mesh, ici_shape, dcn_shape, devices=devices)
    elif devices == list(jax.devices()) or devices[0].platform == "tpu":
        # TPU devices (local, or a topology's that AOT compiles for) are laid out along the slice's physical axes.
        device_array = _physical_mesh(mesh_utils.create_device_mesh, shape, devices=devices)
    else:
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _physical_mesh(create: Any, *shape_args: Any, devices: Sequence[jax.Device]) -> np.ndarray:
    try:
        return create(*shape_args, devices=devices)
    except (NotImplementedError, ValueError, AssertionError) as e:
        axes = dict(zip(MESH_AXES, shape_args[0], strict=True))
        physical = "x".join(str(n + 1) for n in np.max([getattr(d, "coords", (0,)) for d in devices], axis=0))
        raise SoraError(f"config.mesh {axes} cannot be laid onto the {physical} physical axes of these "
                        f"{len(devices)} {devices[0].device_kind} devices ({str(e).splitlines()[0][:160]}); make "
                        "each mesh axis a product of physical axis sizes (e.g. fsdp = the devices of a whole "
                        "physical axis or plane).") from None


def mesh_from_config(mesh_config: Any) -> Mesh:
    """The mesh described by `config.mesh` (axis sizes and the multi-slice dcn_* sizes).

    `fsdp=0` means automatic: 1 (pure data parallelism) in a single process; on a pod, each host's devices
    shard the weights (FSDP inside a host, data parallelism across hosts).
    """
    sizes = {a: mesh_config[a] for a in MESH_AXES}
    if sizes["fsdp"] == 0:
        sizes["fsdp"] = jax.local_device_count() if jax.process_count() > 1 else 1
    return make_mesh(sizes, dcn={a: mesh_config[f"dcn_{a}"] for a in MESH_AXES})


def check_rules(rules: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """Validate a logical-axis rules table and return it as a tuple of (logical, mesh axes) pairs."""
    checked = []
    for logical, mesh_axes in rules:
        if logical not in LOGICAL_AXES:
            raise SoraError(f"config.mesh.logical_axis_rules names unknown logical axis {logical!r}; "
                            f"known: {', '.join(LOGICAL_AXES)}.")
        targets = mesh_axes if isinstance(mesh_axes, tuple | list) else (mesh_axes,)
        for axis in targets:
            if axis is not None and axis not in MESH_AXES:
                raise SoraError(f"config.mesh.logical_axis_rules maps {logical!r} to unknown mesh axis {axis!r}; "
                                f"use one of {', '.join(MESH_AXES)} or None.")
        checked.append((logical, tuple(mesh_axes) if isinstance(mesh_axes, list) else mesh_axes))
    return tuple(checked)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Make `mesh` and the logical-axis `rules` current, so model activation constraints resolve to mesh axes."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch array: leading dimension over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """Map a tree with logical partitioning metadata (flax boxes) to a tree of NamedShardings."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract_tree: Any, shardings: Any) -> None:
    """Raise SoraError naming the first array whose dimension does not divide over the axes that shard it."""
    leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_tree))
    for (path, leaf), sharding in zip(leaves, jax.tree_util.tree_leaves(shardings), strict=True):
        for dim, axes in zip(leaf.shape, sharding.spec, strict=False):
            if axes is None:
                continue
            size = math.prod(sharding.mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
            if dim % size:
                name = "/".join(str(getattr(k, "key", k)) for k in path)
                raise SoraError(f"{name} has shape {leaf.shape}: dimension {dim} is not divisible by the {size} "
                                f"devices of mesh axes {axes}; change the model size or config.mesh.")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turn this host's rows of a batch into global arrays sharded over the data-parallel axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
