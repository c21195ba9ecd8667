"""The table of docs/tpu.md: T5 v1.1 and mT5 on Cloud TPU slices, compiled ahead of time on this machine.

For each model and slice: the largest batch per chip that the TPU compiler accepts at 512 / 114 tokens (bf16 compute,
f32 params, Adafactor, layers scanned, FSDP over every chip), found by bisection (see `largest_batch`; to within an
eighth), and at that batch every figure of
`train.py --dry_run --topology`: state and compiler memory per chip, FLOPs, the step-time floor, the collectives'
estimated time, the estimated step time and the MFU bound. No TPU is used: `pip install -e ".[tpu]"` (libtpu).

    python bench/tpu_table.py                                   # the whole table (hours on 2 CPU cores)
    python bench/tpu_table.py --models=base --targets=v5litepod-16 --policies=none,full,dots_saveable,\
dots_with_no_batch_dims_saveable                                # the remat policies, side by side

Rows are printed as they finish (markdown), and appended to --out when given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sora_jax.aot import compile as compile_lib  # noqa: E402
from sora_jax.aot import report, topology  # noqa: E402
from sora_jax.config import base_config  # noqa: E402
from sora_jax.errors import SoraError  # noqa: E402
from sora_jax.training.dry_run import step_inputs  # noqa: E402

SQUEEZE = "xla_tpu_max_hbm_size_mib"  # libtpu's HBM size override, in MiB
MODELS = {"small": "t5_v1_1_small", "base": "t5_v1_1_base", "large": "t5_v1_1_large", "xl": "t5_v1_1_xl",
          "xxl": "t5_v1_1_xxl", "mt5_xl": "mt5_xl"}
TARGETS = ("v5litepod-16", "v5litepod-64", "v5p-32", "v5p-128", "v6e-16", "v6e-64")
HEADER = ("| model | slice | remat | batch/chip (largest that fits) | params+opt GiB/chip | args GiB | temp GiB "
          "(memory_analysis) | total / HBM GiB (temporaries as the buffer assignment holds them) | headroom GiB | "
          "TFLOP/step | floor ms | ICI ms | DCN ms | est. step ms | MFU <= | compile s |\n|" + "---|" * 16)


def pretraining_config(preset: str, per_chip: int, chips: int, remat: str):
    """configs/t5_c4.py's training setup for `preset`, `per_chip` rows per chip on `chips` chips."""
    config = base_config()
    config.model.preset = preset
    config.model.vocab_size = 250112 if preset.startswith("mt5") else 32128
    config.tokenizer.vocab_size, config.tokenizer.extra_ids = 32000, 100
    config.model.dtype, config.model.param_dtype = "bfloat16", "float32"
    config.model.dropout_rate = 0.0
    config.model.scan_layers, config.model.remat_policy = True, remat
    config.data.max_input_length, config.data.max_target_length = 512, 114
    config.batch_size = per_chip * chips
    config.optimizer.name, config.optimizer.schedule = "adafactor", "rsqrt"
    config.optimizer.learning_rate, config.optimizer.warmup_steps, config.optimizer.weight_decay = 1e-2, 10_000, 0.0
    config.mesh.data, config.mesh.fsdp = 1, -1
    return config


def _bytes(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)\s*([KMGT]?)i?B?", text.strip()).groups()
    return float(number) * 1024 ** " KMGT".index(unit or " ")


def inputs_for(preset: str, target: topology.Target, devices: list, per_chip: int, remat: str):
    """The abstract train step of `per_chip` rows per chip on `target`."""
    config = pretraining_config(preset, per_chip, target.num_chips, remat)
    return step_inputs(config, compile_lib.target_mesh(config.mesh, devices, target.num_slices))


def requirement(inputs) -> float:
    """The bytes per chip the TPU compiler needs when squeezed: compiled against a 1 MiB HBM it stops at buffer
    assignment (seconds, no code generation) and reports the least it managed (it works harder to save memory under
    pressure than with room to spare, so this is below an unconstrained compile's figure)."""
    try:
        inputs.compile({SQUEEZE: "1"})
    except Exception as e:  # noqa: BLE001 - the expected out-of-memory JaxRuntimeError
        found = re.search(r"required for [\w ]+ \(([^)]+)\) exceeds available HBM", str(e))
        if found:
            return _bytes(found.group(1))
        raise
    return 0.0


def largest_batch(preset: str, target: topology.Target, remat: str, start: int, log: callable,
                  verify: bool = True) -> tuple[int, dict | None]:
    """The most rows per chip that the compiler fits: bisection on `requirement` (fast), then one real compile
    (code generation included) at the answer for the figures, stepping down while that one does not fit."""
    devices = topology.devices(target)
    needs: dict[int, float] = {}

    def fits(n: int) -> bool:
        started = time.perf_counter()
        needs[n] = requirement(inputs_for(preset, target, devices, n, remat))
        log(f"  {preset} on {target.name}, {remat}: {n} rows/chip need {needs[n] / 2**30:.2f} GiB when squeezed "
            f"({time.perf_counter() - started:.0f} s)")
        return needs[n] <= target.chip.hbm_bytes

    good, n = 0, start
    if fits(n):
        while n < 4096 and fits(n * 2):
            n *= 2
        good, bad = n, n * 2
    else:
        bad = n
        while n > 1 and not good:
            n //= 2
            good, bad = (n, bad) if fits(n) else (0, n)
        if not good:
            return 0, None
    while bad - good > max(1, good // 8):  # to within an eighth: a finer answer costs more compiles than it tells
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    if not verify:
        return good, {"squeezed_bytes": needs[good]}
    while good > 0:
        inputs = inputs_for(preset, target, devices, good, remat)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                compiled = compile_lib.compile_train_step(inputs)
                figures = report.train_report(target, inputs, compiled.executable, compiled.seconds,
                                                     compiled.assigned_temp_bytes)
            log(f"  {preset} on {target.name}, {remat}: {good} rows/chip compiled in {compiled.seconds:.0f} s")
            return good, figures
        except SoraError as e:
            if "does not fit" not in str(e) and "ran out of" not in str(e):
                raise
            log(f"  {good} rows/chip fit when squeezed but not in a full compile; trying fewer")
            good = good * 7 // 8
    return 0, None


def row(model: str, target: topology.Target, remat: str, per_chip: int, figures: dict | None) -> str:
    """One markdown row."""
    if figures is None:
        return f"| {model} | {target.name} | {remat} | 0 (does not fit at 1 row/chip) |" + " |" * 12
    if "memory" not in figures:  # --no_verify: the bisection's answer only
        return (f"| {model} | {target.name} | {remat} | {per_chip} (needs {figures['squeezed_bytes'] / 2**30:.2f} GiB "
                "squeezed; not compiled in full) |" + " |" * 12)
    gib, m, e = 2**30, figures["memory"], figures["estimate"]
    return (f"| {model} | {target.name} | {remat} | {per_chip} | "
            f"{(figures['param_bytes_per_chip'] + figures['opt_bytes_per_chip']) / gib:.2f} | {m.argument / gib:.2f} | "
            f"{m.temp / gib:.2f} | {m.total / gib:.2f} / {m.hbm / gib:.2f} | {m.headroom / gib:.2f} | "
            f"{figures['flops_per_step'] / 1e12:,.0f} | {e.floor_s * 1e3:.0f} | {e.ici_s * 1e3:.0f} | "
            f"{e.dcn_s * 1e3:.0f} | {e.step_s * 1e3:.0f} | {e.mfu_bound:.0%} | {figures['compile_s']:.0f} |")


def main() -> int:
    """Parse the flags, fill the table row by row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated slice names")
    parser.add_argument("--policies", default="dots_with_no_batch_dims_saveable",
                        help="comma-separated model.remat_policy values")
    parser.add_argument("--start", type=int, default=16, help="rows per chip tried first")
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--no_verify", action="store_true",
                        help="skip the full compile at the answer (faster; no figures but the batch)")
    parser.add_argument("--out", default="", help="append the rows (markdown) to this file")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{started}, {platform.node()} ({platform.processor() or platform.machine()}), "
          f"{' '.join(sys.argv)}\n\n{HEADER}", flush=True)
    lines = [HEADER]
    for model in args.models.split(","):
        for name in args.targets.split(","):
            target = topology.resolve(name, args.num_slices)
            for remat in args.policies.split(","):
                per_chip, figures = largest_batch(MODELS[model], target, remat, args.start, log,
                                                   verify=not args.no_verify)
                lines.append(row(model, target, remat, per_chip, figures))
                print(lines[-1], flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(lines[-1] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
