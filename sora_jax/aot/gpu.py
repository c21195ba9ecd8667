"""NVIDIA GPU targets without a GPU: XLA's GPU compiler, given one of the device descriptions it ships, compiles
Sora's step and reports memory per device. Memory only: the GPU compiler reports no FLOPs, and it does not refuse a
program larger than the card (Sora compares the total with the card's memory itself).

Needs the CUDA PJRT plugin (`pip install -e ".[cuda]"`, or just `jax-cuda12-plugin` and `jax-cuda12-pjrt` at jax's
version: no CUDA libraries are loaded to compile). The device descriptions are XLA's own (xla/backends/gpu/
target_config/specs), embedded in the plugin; they are read from it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import Any

from sora_jax.errors import SoraError

# --topology name -> XLA's device_description_str of that card.
CARDS = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200 141GB HBM3e", "a100": "NVIDIA A100-SXM4-80GB",
         "b200": "NVIDIA B200"}
_NAME = re.compile(r"(" + "|".join(CARDS) + r")(?:[x-](\d+))?")


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """`count` cards of one kind in one host."""

    name: str
    card: str
    count: int

    def describe(self) -> str:
        """'h100x8 (8 x NVIDIA H100 80GB HBM3)'."""
        return f"{self.name} ({self.count} x {self.card})"


def resolve(name: str) -> GpuTarget | None:
    """h100, h100x8, h200-4, ...; None when `name` is not a GPU target."""
    found = _NAME.fullmatch(name.strip().lower())
    if not found:
        return None
    return GpuTarget(name, CARDS[found.group(1)], int(found.group(2) or 1))


def _target_config(card: str) -> str:
    spec = importlib.util.find_spec("jax_plugins.xla_cuda12")
    if spec is None or not spec.submodule_search_locations:
        raise SoraError('a GPU --topology needs the CUDA PJRT plugin: pip install -e ".[cuda]" (or jax-cuda12-plugin '
                        "and jax-cuda12-pjrt at jax's version).")
    library = next(Path(spec.submodule_search_locations[0]).glob("*.so"))
    data = library.read_bytes()
    # Each spec is one NUL-terminated text proto in the plugin's read-only data.
    found = re.search(rb'device_description_str: "' + re.escape(card.encode()) + rb'"', data)
    if found is None:
        raise SoraError(f"this CUDA plugin ({library.name}) ships no device description of {card}; use one of "
                        f"{', '.join(CARDS)} with a plugin that has it.")
    return data[data.rfind(b"\0", 0, found.start()) + 1:data.find(b"\0", found.end())].decode()


def memory_bytes(target_config: str) -> int:
    """The card's memory, from its device description."""
    return int(re.search(r"device_memory_size: (\d+)", target_config).group(1))


def devices(target: GpuTarget) -> tuple[list[Any], int]:
    """(compile-only devices of `target`, the card's memory in bytes)."""
    from jax.experimental import topologies

    config = _target_config(target.card)
    description = topologies.get_topology_desc(topology_name=target.name, platform="cuda",
                                               topology=f"1x1x{target.count}", target_config=config)
    return list(description.devices), memory_bytes(config)
