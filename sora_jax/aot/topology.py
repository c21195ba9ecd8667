"""Cloud TPU slices by name, and the facts about their chips that the AOT report needs, in one table.

Names are what `gcloud compute tpus tpu-vm create --accelerator-type` takes (v4-8, v5litepod-16, v5p-128, v6e-64)
or a raw topology GEN:AxB[xC] (v5e:4x4, v5p:4x4x8). The devices come from libtpu's topology description: no TPU is
opened, only its compiler, so this works on a CPU-only machine with `pip install -e ".[tpu]"`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator
from typing import Any

from sora_jax.errors import SoraError
from sora_jax.training import flops

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation. Bandwidths are per chip in GB/s, for the collective-time estimates only."""

    generation: str  # v4 | v5e | v5p | v6e
    libtpu_name: str  # the topology-name prefix libtpu takes
    device_kind: str  # jax's device_kind
    hbm_bytes: int  # what the TPU compiler lets a program use (measured: the limit in its out-of-memory message)
    ici_gbytes_s: float  # all-reduce bandwidth per chip: the pod's all-reduce bandwidth / its chips (Cloud docs)
    dcn_gbytes_s: float  # the host's NICs shared by its chips (Cloud docs where given; see docs/tpu.md)
    dims: int  # 2-D or 3-D torus
    cores_per_chip_in_name: int  # gcloud's v4-N / v5p-N count TensorCores (2 per chip); v5litepod / v6e count chips
    gcloud_prefix: str

    @property
    def peak_tflops(self) -> float:
        """Dense bf16 peak per chip (flops.peak_tflops holds the numbers)."""
        peak = flops.peak_tflops(self.device_kind)
        assert peak is not None, self.device_kind
        return peak


# HBM: the compiler's own limit (its out-of-memory message on a program too large: 30.75 / 15.75 / 95.73 / 31.24 GiB).
# ICI: the Cloud TPU docs' all-reduce bandwidth per pod / chips per pod (v4 1.1 PB/s over 4096, v5e 51.2 TB/s over
# 256, v6e 102.4 TB/s over 256); v5p: half its 4800 Gbit/s bidirectional ICI, as for the others. DCN: the v5e pod's
# 6.4 Tbit/s over 256 chips; the other generations assumed at 50 Gbit/s per chip (6.25 GB/s): an estimate.
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", "TPU v4", int(30.75 * GIB), 1.1e6 / 4096, 6.25, 3, 2, "v4"),
    "v5e": Chip("v5e", "v5e", "TPU v5 lite", int(15.75 * GIB), 51.2e3 / 256, 6.4e3 / 8 / 256, 2, 1, "v5litepod"),
    "v5p": Chip("v5p", "v5p", "TPU v5", int(95.73 * GIB), 4800 / 8 / 2, 6.25, 3, 2, "v5p"),
    "v6e": Chip("v6e", "v6e", "TPU v6 lite", int(31.24 * GIB), 102.4e3 / 256, 6.25, 2, 1, "v6e"),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5e": "v5e", "v5p": "v5p", "v5": "v5p", "v4": "v4", "v6e": "v6e"}
# Chips in the standard slices: v5e / v6e offer these 2-D shapes; v4 / v5p any power of two from 4 (a 3-D shape).
_2D_CHIPS = (1, 4, 8, 16, 32, 64, 128, 256)

ACCEPTED = ("a Cloud TPU accelerator type as gcloud spells it (v4-8, v5litepod-16, v5p-128, v6e-64; v4 and v5p count "
            "TensorCores, 2 per chip) or a raw topology GEN:AxB[xC] (v5e:4x4, v6e:8x8, v4:2x2x2, v5p:4x4x8)")


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice (or several identical slices) to compile for."""

    name: str  # as the user wrote it
    chip: Chip
    shape: tuple[int, ...]  # chips along each physical axis of one slice
    num_slices: int = 1

    @property
    def num_chips(self) -> int:
        """Chips over all slices."""
        return math.prod(self.shape) * self.num_slices

    @property
    def topology(self) -> str:
        """libtpu's name of one slice, e.g. v5e:4x4."""
        return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.shape))}"

    def describe(self) -> str:
        """'v5p-128 (v5p:4x4x4, 64 chips of TPU v5, 16 hosts)'."""
        slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
        return f"{self.name} ({self.topology}{slices}, {self.num_chips} chips of {self.chip.device_kind})"


def _standard_shape(chip: Chip, num_chips: int) -> tuple[int, ...] | None:
    # Grow from the smallest slice by doubling the last of the shortest axes: v5p 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4,
    # 4x4x8...; v5e 1x1, (1x2), 2x2, 2x4, 4x4, 4x8, 8x8 - the shapes Cloud TPU documents for these sizes.
    if chip.dims == 2 and num_chips not in _2D_CHIPS:
        return None
    if chip.dims == 3 and (num_chips < 4 or num_chips & (num_chips - 1)):
        return None
    shape = [2, 2, 1] if chip.dims == 3 else [1, 1]
    while math.prod(shape) < num_chips:
        smallest = min(shape)
        index = max(i for i, s in enumerate(shape) if s == smallest)
        shape[index] *= 2
    return tuple(shape)


def _unknown(name: str, why: str = "") -> SoraError:
    return SoraError(f"unknown TPU topology {name!r}{why}; use {ACCEPTED}.")


def resolve(name: str, num_slices: int = 1) -> Target:
    """The slice `name` names (a gcloud accelerator type or GEN:AxB[xC]), times num_slices; SoraError if unknown."""
    if not isinstance(num_slices, int) or num_slices < 1:
        raise SoraError(f"--num_slices must be a positive integer, got {num_slices!r}.")
    text = name.strip().lower()
    raw = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text)
    gcloud = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    generation = _ALIASES.get((raw or gcloud).group(1)) if (raw or gcloud) else None
    if generation is None:
        raise _unknown(name)
    chip = CHIPS[generation]
    if raw:
        shape = tuple(int(s) for s in raw.group(2).split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise _unknown(name, f" ({generation} slices are {chip.dims}-D)")
        return Target(name, chip, shape, num_slices)
    count = int(gcloud.group(2))
    chips, rest = divmod(count, chip.cores_per_chip_in_name)
    shape = _standard_shape(chip, chips) if not rest else None
    if shape is None:
        raise _unknown(name, f" (no standard {chip.gcloud_prefix} slice of {count} "
                             f"{'TensorCores' if chip.cores_per_chip_in_name > 1 else 'chips'})")
    return Target(name, chip, shape, num_slices)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    # libtpu writes warnings meant for a TPU VM ("could not determine TPU accelerator type", "unexpected worker
    # hostname") straight to file descriptor 2; here they are noise. Python exceptions still carry the errors.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def devices(target: Target) -> list[Any]:
    """The TPU devices of `target` (every slice), from libtpu's topology description; nothing is opened."""
    # Only the compiler is used: another process on this machine holding libtpu's lock (a second dry run, the test
    # suite) must not stop this one.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - jax always ships it
        raise SoraError(f"this jax has no jax.experimental.topologies ({e}); install jax>=0.12.") from None
    options: dict[str, Any] = {"chip_config_name": "megacore"} if target.chip.generation == "v4" else {}
    try:
        with _quiet_stderr():
            description = topologies.get_topology_desc(topology_name=target.topology, platform="tpu",
                                                       num_slices=target.num_slices, **options)
    except Exception as e:  # noqa: BLE001 - libtpu raises RuntimeErrors of several kinds
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "libtpu" in message.lower() and ("not found" in message.lower() or "no module" in message.lower()):
            raise SoraError('--topology needs libtpu (the TPU compiler): pip install -e ".[tpu]".') from None
        raise SoraError(f"libtpu cannot describe {target.describe()}: {message}") from None
    return list(description.devices)
