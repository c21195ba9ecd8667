"""The collectives a compiled TPU program runs per step, read off its optimized HLO text, with an estimate of their
time over ICI (inside a slice) and DCN (between slices).

Each collective instruction is counted once per execution of its computation: a scanned layer's all-gather runs
once per layer (the while loop's known trip count). TPU HLO repeats a decomposed asynchronous collective under one
channel_id in several fusions; a channel is counted once. Times assume ring algorithms at the chip's bandwidth and
no overlap with anything: an estimate, not a measurement.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "bf16": 16, "f16": 16, "s16": 16, "u16": 16,
               "f32": 32, "s32": 32, "u32": 32, "f64": 64, "s64": 64, "u64": 64, "f8e4m3fn": 8, "f8e5m2": 8}
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(KINDS) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
# Between slices the TPU compiler hands collectives to the multi-slice ("megascale") runtime as host-transfer sends.
_DCN_SEND = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\(?\s*([a-z]+\d*\[[\d,]*\]).*\ssend\(.*"
                       r'_xla_megascale_transfer_type="([A-Z_]+)"')
_CALLS = re.compile(r"(body|calls|to_apply|called_computations|branch_computations|condition)=\{?([^,}]+(?:,\s*%"
                    r"[\w.\-]+)*)\}?")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass
class Collective:
    """One kind of collective over one network, summed over a step (per chip)."""

    kind: str
    network: str  # "ICI" or "DCN"
    count: int = 0  # executions per step
    payload_bytes: float = 0.0  # the results' bytes, per chip
    traffic_bytes: float = 0.0  # what a ring moves through one chip's links
    seconds: float = 0.0


def _array_bytes(shape_text: str) -> int:
    # The result of the collective; a tuple (async start) lists operands and results: count the larger half.
    arrays = [(dtype, dims) for dtype, dims in _ARRAY.findall(shape_text) if dtype in _DTYPE_BITS]
    sizes = [math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BITS[dtype] // 8 for dtype, dims in arrays]
    if len(sizes) > 1 and shape_text.lstrip().startswith("("):
        half = len(sizes) // 2
        return max(sum(sizes[:half]), sum(sizes[half:]))
    return sum(sizes)


def _first_group(line: str, num_devices: int) -> list[int]:
    """The partition ids of the first replica group of a collective instruction (all devices when not given)."""
    explicit = re.search(r"replica_groups=\{\{([\d,\s]*)\}", line)
    if explicit:
        return [int(x) for x in explicit.group(1).split(",") if x.strip()]
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if iota:
        groups = [int(x) for x in iota.group(1).split(",")]
        ids = np.arange(math.prod(int(x) for x in iota.group(2).split(","))).reshape(
            [int(x) for x in iota.group(2).split(",")])
        if iota.group(3):
            ids = ids.transpose([int(x) for x in iota.group(3).split(",")])
        return ids.reshape(groups[0], -1)[0].tolist()
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if mesh:
        axes = re.findall(r"'([^']+)'=(\d+)", mesh.group(1))
        names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
        spanned = set(re.findall(r"'([^']+)'", mesh.group(2)))
        ids = np.arange(math.prod(sizes)).reshape(sizes)
        index = tuple(slice(None) if n in spanned else 0 for n in names)
        return ids[index].reshape(-1).tolist()
    if re.search(r"source_target_pairs=\{\{(\d+),(\d+)\}", line):
        pair = re.search(r"source_target_pairs=\{\{(\d+),(\d+)\}", line)
        return [int(pair.group(1)), int(pair.group(2))]
    return list(range(num_devices))


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    bodies: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            bodies[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None:
            if line.strip() == "}":
                current = None
            else:
                bodies[current].append(line)
    return bodies, entry


def _trip_count(line: str, bodies: dict[str, list[str]]) -> int:
    # XLA:GPU/CPU annotate a while's known trip count; the TPU compiler leaves a condition `i < N` (scan: i from 0).
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    condition = re.search(r"condition=%?([\w.\-]+)", line)
    if not condition or condition.group(1) not in bodies:
        return 1
    lines = bodies[condition.group(1)]
    constants = {m.group(1): int(m.group(2)) for m in (re.match(r"\s*%?([\w.\-]+)\s*=\s*s32\[\]\S*\s+constant\((\d+)\)",
                                                              x) for x in lines) if m}
    for x in lines:
        compare = re.search(r"compare\(([^)]*)\),\s*direction=LT", x)
        if compare:
            for operand in re.findall(r"%?([\w.\-]+)", compare.group(1)):
                if operand in constants:
                    return constants[operand]
    return 1


def _multipliers(bodies: dict[str, list[str]], entry: str) -> dict[str, int]:
    # Executions of each computation per run of the entry: a while body runs its trip count times per execution of
    # the computation holding the while; anything else called runs once per call.
    calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for name, lines in bodies.items():
        for line in lines:
            trip = _trip_count(line, bodies)
            for key, targets in _CALLS.findall(line):
                if key == "condition":
                    continue
                for target in re.findall(r"%?([\w.\-]+)", targets):
                    if target in bodies:
                        calls[name].append((target, trip if key == "body" else 1))
    counts: dict[str, int] = collections.defaultdict(int)

    def visit(name: str, times: int, depth: int) -> None:
        counts[name] += times
        if depth < 64:
            for target, repeat in calls.get(name, ()):
                visit(target, times * repeat, depth + 1)

    if entry:
        visit(entry, 1, 0)
    return counts


def collectives(hlo: str, devices: list[Any], ici_gbytes_s: float, dcn_gbytes_s: float) -> list[Collective]:
    """The collectives of one run of `hlo` (a compiled program's as_text()) over `devices` (the mesh's devices in
    partition order), per chip, grouped by kind and network, with estimated seconds."""
    bodies, entry = _computations(hlo)
    times = _multipliers(bodies, entry)
    seen: dict[str, tuple[int, str, int, str]] = {}  # channel -> (executions, kind, bytes, line)
    anonymous = 0
    dcn: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])  # kind -> [executions, bytes]
    for name, lines in bodies.items():
        for line in lines:
            if times.get(name, 0) == 0:
                continue
            sent = _DCN_SEND.match(line)
            if sent:
                kind = sent.group(2).lower().replace("_", "-")
                dcn[kind if kind in KINDS else "all-reduce"][0] += times[name]
                dcn[kind if kind in KINDS else "all-reduce"][1] += times[name] * _array_bytes(sent.group(1))
                continue
            found = _INSTRUCTION.match(line)
            if not found:
                continue
            channel = re.search(r"channel_id=(\d+)", line)
            key = channel.group(1) if channel else f"anon{(anonymous := anonymous + 1)}"
            previous = seen.get(key)
            executions = max(times[name], previous[0] if previous else 0)
            seen[key] = (executions, found.group(2), _array_bytes(found.group(1)), line)
    slices = [getattr(d, "slice_index", 0) for d in devices]
    totals: dict[tuple[str, str], Collective] = {}
    for executions, kind, size, line in seen.values():
        group = [i for i in _first_group(line, len(devices)) if i < len(devices)] or [0]
        n = len(group)
        network = "DCN" if len({slices[i] for i in group}) > 1 else "ICI"
        ring = {"all-gather": (n - 1) / n, "reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n,
                "all-to-all": (n - 1) / n, "collective-permute": 1.0}[kind]
        bandwidth = (dcn_gbytes_s if network == "DCN" else ici_gbytes_s) * 1e9
        total = totals.setdefault((kind, network), Collective(kind, network))
        total.count += executions
        total.payload_bytes += executions * size
        total.traffic_bytes += executions * size * ring
        total.seconds += executions * size * ring / bandwidth
    n = len(set(slices))
    for kind, (executions, size) in dcn.items():
        ring = {"all-gather": (n - 1) / n, "reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n}.get(kind, 1.0)
        total = totals.setdefault((kind, "DCN"), Collective(kind, "DCN"))
        total.count += int(executions)
        total.payload_bytes += size
        total.traffic_bytes += size * ring
        total.seconds += size * ring / (dcn_gbytes_s * 1e9)
    return sorted(totals.values(), key=lambda c: (c.network, KINDS.index(c.kind)))
