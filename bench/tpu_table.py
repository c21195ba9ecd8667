"""The table of docs/tpu.md: T5 v1.1 and mT5 on Cloud TPU slices, compiled ahead of time on this machine.

For each model and slice: the largest batch per chip that the TPU compiler accepts at 512 / 114 tokens (bf16 compute,
f32 params, Adafactor, layers scanned, FSDP over every chip), found by bisection, and at that batch every figure of
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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sora_jax.aot import compile as compile_lib  # noqa: E402
from sora_jax.aot import report, topology  # noqa: E402
from sora_jax.config import base_config  # noqa: E402
from sora_jax.errors import SoraError  # noqa: E402
from sora_jax.training.dry_run import step_inputs  # noqa: E402

MODELS = {"small": "t5_v1_1_small", "base": "t5_v1_1_base", "large": "t5_v1_1_large", "xl": "t5_v1_1_xl",
          "xxl": "t5_v1_1_xxl", "mt5_xl": "mt5_xl"}
TARGETS = ("v5litepod-16", "v5litepod-64", "v5p-32", "v5p-128", "v6e-16", "v6e-64")
HEADER = ("| model | slice | remat | batch/chip (largest that fits) | params+opt GiB/chip | args GiB | temp GiB | "
          "total / HBM GiB | headroom | TFLOP/step | floor ms | ICI ms | DCN ms | est. step ms | MFU <= | "
          "compile s |\n|" + "---|" * 16)


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


def try_batch(preset: str, target: topology.Target, devices: list, per_chip: int, remat: str) -> dict | None:
    """The report's figures when `per_chip` rows fit, None when the compiler refuses (out of memory)."""
    config = pretraining_config(preset, per_chip, target.num_chips, remat)
    mesh = compile_lib.target_mesh(config.mesh, target, devices)
    inputs = step_inputs(config, mesh)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            compiled = compile_lib.compile_train_step(inputs)
            return report.train_report(target, inputs, compiled.executable, compiled.seconds)
    except SoraError as e:
        if "does not fit" in str(e) or "ran out of" in str(e):
            return None
        raise


def largest_batch(preset: str, target: topology.Target, remat: str, start: int, max_compiles: int,
                  log: callable) -> tuple[int, dict | None]:
    """Bisection on rows per chip: double (or halve) from `start` until fit and no-fit are bracketed, then split."""
    devices = topology.devices(target)
    fits: dict[int, dict | None] = {}

    def probe(n: int) -> bool:
        started = time.perf_counter()
        fits[n] = try_batch(preset, target, devices, n, remat)
        log(f"  {preset} on {target.name}, {remat}: {n} rows/chip "
            f"{'fits' if fits[n] else 'does not fit'} ({time.perf_counter() - started:.0f} s)")
        return fits[n] is not None

    n = start
    if probe(n):
        while len(fits) < max_compiles and probe(n * 2):
            n *= 2
    else:
        while n > 1 and len(fits) < max_compiles and not probe(n // 2):
            n //= 2
        n //= 2
    good = max((k for k, v in fits.items() if v), default=0)
    bad = min((k for k, v in fits.items() if not v), default=None)
    while bad is not None and bad - good > 1 and len(fits) < max_compiles and good:
        middle = (good + bad) // 2
        if probe(middle):
            good = middle
        else:
            bad = middle
    return good, fits.get(good)


def row(model: str, target: topology.Target, remat: str, per_chip: int, figures: dict | None) -> str:
    """One markdown row."""
    if figures is None:
        return f"| {model} | {target.name} | {remat} | 0 (does not fit at 1 row/chip) |" + " |" * 12
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
    parser.add_argument("--max_compiles", type=int, default=6, help="compiles per row, at most")
    parser.add_argument("--num_slices", type=int, default=1)
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
                per_chip, figures = largest_batch(MODELS[model], target, remat, args.start, args.max_compiles, log)
                lines.append(row(model, target, remat, per_chip, figures))
                print(lines[-1], flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(lines[-1] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
