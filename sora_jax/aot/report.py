"""What a compiled step needs per chip and how fast it could run: compiler figures and Sora's estimates, labelled.

From the compiler (memory_analysis of the compiled program): argument, output, aliased, temporary and code bytes per
chip. Sora's own counts: params and optimizer state per chip (the sharded abstract state), the analytic FLOPs of a
step. Estimates: the step-time floor at the chip's peak, the collectives' time over ICI / DCN (collectives.py), and
from those a step time and an MFU bound.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sora_jax.aot import collectives as collectives_lib
from sora_jax.aot.topology import Target
from sora_jax.model import params as params_lib
from sora_jax.training import flops
from sora_jax.training.dry_run import StepInputs

GIB = 2**30


@dataclasses.dataclass
class Memory:
    """Per-chip bytes of a compiled program (compiler figures) against the chip's HBM."""

    argument: int
    output: int
    alias: int
    temp: int
    code: int
    hbm: int
    assigned_temp: int | None = None  # the buffer assignment's HBM temporaries (TPU), when read

    @classmethod
    def of(cls, compiled: Any, hbm: int, assigned_temp: int | None = None) -> Memory:
        """From `compiled.memory_analysis()` (and the buffer assignment's temporaries when known)."""
        m = compiled.memory_analysis()
        return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes,
                   m.generated_code_size_in_bytes, hbm, assigned_temp)

    @property
    def total(self) -> int:
        """Peak bytes the program holds: arguments + outputs not aliased onto them + temporaries (as the buffer
        assignment reserves them when known, else memory_analysis') + code."""
        temp = self.temp if self.assigned_temp is None else self.assigned_temp
        return self.argument + self.output - self.alias + temp + self.code

    @property
    def headroom(self) -> int:
        """HBM left over (negative: it does not fit)."""
        return self.hbm - self.total

    def line(self) -> str:
        """'arguments 0.36 GiB, outputs ..., total 12.1 of 15.75 GiB HBM, headroom 3.6 GiB (23 %)'."""
        g = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        temp = f"temporaries {g(self.temp)}"
        if self.assigned_temp is not None:
            temp = f"temporaries {g(self.assigned_temp)} (buffer assignment; memory_analysis says {g(self.temp)})"
        line = (f"arguments {g(self.argument)}, outputs {g(self.output)} ({g(self.alias)} of them aliased onto the "
                f"arguments), {temp}, code {g(self.code)}; total {g(self.total)} of {g(self.hbm)} HBM")
        if self.headroom >= 0:
            return f"{line}, headroom {g(self.headroom)} ({self.headroom / self.hbm:.0%})"
        # Measured: the TPU compiler fit programs whose memory_analysis temporaries exceed the chip (its buffer
        # assignment's temporary allocation was smaller, e.g. 10.7 GiB where memory_analysis said 15.3).
        return (f"{line}: more than the chip, yet the compiler fit the program (it refuses what does not fit; on TPU "
                "memory_analysis's temporaries can exceed what its buffer assignment holds at once)")


@dataclasses.dataclass
class Estimate:
    """Step-time figures: the compute floor at peak, the collectives' time, and what follows from them."""

    flops_per_step: float  # Sora's analytic count, whole batch
    floor_s: float  # flops / (chips x peak)
    ici_s: float
    dcn_s: float

    @property
    def step_s(self) -> float:
        """Estimated step time if collectives overlap compute perfectly: the slower of the two."""
        return max(self.floor_s, self.ici_s + self.dcn_s)

    @property
    def mfu_bound(self) -> float:
        """The MFU the step cannot exceed by this estimate."""
        return self.floor_s / self.step_s if self.step_s else 0.0


def train_report(target: Target, inputs: StepInputs, compiled: Any, compile_s: float,
                 assigned_temp: int | None = None) -> dict[str, Any]:
    """Print the train step's per-chip memory, FLOPs, collectives and estimates; return them (for tests, bench)."""
    chip, mesh, config = target.chip, inputs.mesh, inputs.config
    abstract = inputs.setup.abstract_state
    param_bytes = params_lib.tree_bytes(abstract.params, per_device=True)
    opt_bytes = params_lib.tree_bytes(abstract.opt_state, per_device=True)
    memory = Memory.of(compiled, chip.hbm_bytes, assigned_temp)
    step = flops.train_step_flops(inputs.model_config, config.batch_size, config.data.max_input_length,
                                  config.data.max_target_length, config.grad_accum_steps)
    devices = list(mesh.devices.flat)
    found = collectives_lib.collectives(compiled.as_text(), devices, chip.ici_gbytes_s, chip.dcn_gbytes_s)
    estimate = Estimate(step.total, step.total / (len(devices) * chip.peak_tflops * 1e12),
                        sum(c.seconds for c in found if c.network == "ICI"),
                        sum(c.seconds for c in found if c.network == "DCN"))
    rows = config.batch_size // len(devices)
    print(f"train step compiled for {target.describe()} in {compile_s:.0f} s; mesh {dict(mesh.shape)}, "
          f"{config.batch_size} rows ({rows:g} per chip) x ({config.data.max_input_length} + "
          f"{config.data.max_target_length}) tokens")
    print(f"per chip, Sora's count of the sharded state: params {param_bytes / GIB:.2f} GiB, optimizer state "
          f"{opt_bytes / GIB:.2f} GiB ({config.optimizer.name})")
    print(f"per chip, from the compiler: {memory.line()}")
    print(f"FLOPs per step (Sora's analytic count; XLA's cost_analysis counts a scanned body once): "
          f"{step.total / 1e12:,.1f} TFLOP; floor at the {chip.device_kind} peak of {chip.peak_tflops:g} TFLOP/s "
          f"per chip: {estimate.floor_s * 1e3:.1f} ms")
    if found:
        print("collectives per step, per chip (from the compiled HLO; times are ring estimates at "
              f"{chip.ici_gbytes_s:g} GB/s ICI, {chip.dcn_gbytes_s:g} GB/s DCN per chip):")
        for c in found:
            print(f"  {c.kind:<18} {c.network}  x{c.count:<5} {c.payload_bytes / GIB:8.3f} GiB  "
                  f"~{c.seconds * 1e3:.1f} ms")
    else:
        print("collectives per step: none (nothing is sharded across chips)")
    print(f"estimate: step >= {estimate.step_s * 1e3:.1f} ms (compute floor {estimate.floor_s * 1e3:.1f} ms, "
          f"collectives ICI {estimate.ici_s * 1e3:.1f} ms + DCN {estimate.dcn_s * 1e3:.1f} ms, assumed to overlap); "
          f"MFU <= {estimate.mfu_bound:.0%}. HBM bandwidth, the vector units and exposed communication are not "
          "modelled: a real step is slower.")
    return {"param_bytes_per_chip": param_bytes, "opt_bytes_per_chip": opt_bytes, "memory": memory,
            "flops_per_step": step.total, "estimate": estimate, "collectives": found, "compile_s": compile_s}


def decode_report(compiled: Any, compile_s: float, hbm: int, batch: int, max_length: int) -> Memory:
    """Print the decode step's per-chip memory (compiler figures); return it."""
    memory = Memory.of(compiled, hbm)
    print(f"decode step (greedy, {batch} rows, up to {max_length} tokens) compiled in {compile_s:.0f} s; per chip, "
          f"from the compiler: {memory.line()}")
    return memory
