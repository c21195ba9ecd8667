"""Trained runs served in float32 and with int8 (or int4) weights: test metric, param bytes and decoding speed,
in one run (by hand, not a test).

    python bench/compression.py --runs NAME=WORKDIR[@STEP|@best],... [--schemes float,int8] [--decode_examples 256]
        [--max_eval_examples N]

Each run is evaluated on its whole test split, or its first --max_eval_examples (sora-eval's path:
`evaluate_workdir`, the task's default decoding) with each scheme; "float" is the checkpoint as trained,
int8/int4 its post-training weight-only quantization (`--quantize`). A run trained with
`config.quantization.qat` is listed like any other: its int8 row is the QAT result. Decoding speed: the first
--decode_examples test inputs through `Predictor.predict` (greedy, then beam 4), batch 32, after a warm-up pass
that compiles; tokens/s counts the generated tokens of each output (its pieces plus EOS), median of --repeats passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import tensorflow_datasets as tfds

from sora_jax import Predictor
from sora_jax.evaluation.workdir_eval import evaluate_workdir
from sora_jax.model.params import tree_bytes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="comma-separated NAME=WORKDIR[@STEP|@best]")
    parser.add_argument("--schemes", default="float,int8", help="float and/or int8, int4")
    parser.add_argument("--decode_examples", type=int, default=256)
    parser.add_argument("--max_eval_examples", type=int, default=0, help="0 = the whole test split")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def parse_run(spec: str) -> tuple[str, str, int | str | None]:
    name, _, where = spec.partition("=")
    path, _, step = where.partition("@")
    return name, path, (None if not step else step if step == "best" else int(step))


def decode_tokens_per_s(predictor: Predictor, inputs: list[str], repeats: int, **decode: object) -> float:
    """Median generated tokens/s of `predictor` over `inputs` (after one compiling pass)."""
    outputs = predictor.predict(inputs, raw=True, **decode)
    tokens = sum(len(predictor.tokenizer.encode(text)) + 1 for text in outputs)  # + EOS
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(inputs, raw=True, **decode)
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def bench_run(name: str, path: str, step: int | str | None, scheme: str, args: argparse.Namespace) -> str:
    quantize = "" if scheme == "float" else scheme
    (result,) = evaluate_workdir(path, split="test", step=step, quantize=quantize, max_examples=args.max_eval_examples,
                                 say=lambda _: None, note=lambda _: None)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k not in ("loss", "target_tokens"))
    predictor = Predictor.from_workdir(path, step, quantize=quantize)
    inputs = [p["input"] for p in result.predictions[: args.decode_examples]]
    greedy = decode_tokens_per_s(predictor, inputs, args.repeats, method="greedy")
    beam = decode_tokens_per_s(predictor, inputs, args.repeats, method="beam", beam_size=4)
    size = tree_bytes(predictor.run.params) / 1e6
    return (f"{name:<16} {scheme:<6} {size:8.2f} MB  greedy {greedy:7.0f} tok/s  beam-4 {beam:7.0f} tok/s  "
            f"step {result.step}: {metrics}")


def main() -> None:
    args = parse_args()
    tfds.disable_progress_bar()
    print(f"{jax.devices()[0].device_kind}; test split; decoding speed over {args.decode_examples} inputs, "
          f"medians of {args.repeats}", flush=True)
    for spec in args.runs.split(","):
        name, path, step = parse_run(spec)
        for scheme in args.schemes.split(","):
            print(bench_run(name, path, step, scheme, args), flush=True)


if __name__ == "__main__":
    main()
