"""`sora-eval` / `python -m sora_jax.evaluate`: evaluate a trained workdir's checkpoints on a split.

    sora-eval --workdir=DIR [--step=N|best | --all_checkpoints] [--split=validation|test] [--max_examples=N]
              [--method=greedy|beam|sample] [--beam_size=4] [--alpha=0.6] [--max_length=N]
              [--temperature=T] [--top_k=K] [--top_p=P] [--seed=S] [--config.KEY=VALUE ...]

Restores the params of the newest checkpoint (or --step, --step=best for `DIR/best`, or each kept one with
--all_checkpoints), decodes the whole split in padded batches of config.data.eval_batch_size over the data
axes of the mesh, computes the task's metrics (sora_jax/evaluation/metrics.py) and the teacher-forced loss,
prints them, and writes (under `<split>_best/` for --step=best)

    DIR/eval/<split>_step<N>/predictions.jsonl   one {"input", "target", "prediction"} per example, in order
    DIR/eval/<split>_step<N>/metrics.json        {"step", "split", "examples", "decode", "metrics"}

(a later evaluation of the same split and step, e.g. with other decoding flags, replaces them).

Decoding defaults: beam search (4 beams, length penalty alpha 0.6) for translation tasks, where it gains
BLEU; greedy for classification and generation. --max_length defaults to the longest label + 1 token for
classification tasks, else config.data.max_target_length. The default split is validation (select
checkpoints on it; report --split=test once).

Problems with the input (no checkpoint, a missing step, a config whose shapes no longer match the checkpoint,
a split the dataset lacks, bad flags) print one line starting with "error:" and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sora_jax import inference
from sora_jax.errors import SoraError
from sora_jax.training.cli import split_config_overrides


@dataclasses.dataclass
class EvalResult:
    """One checkpoint's evaluation on one split."""

    step: int
    split: str
    metrics: dict[str, float]
    predictions: list[dict[str, str]]
    directory: Path  # Where predictions.jsonl and metrics.json were written.


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The flags, and the `--config.KEY=VALUE` overrides (parsed as train.py parses them)."""
    rest, overrides = split_config_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="sora-eval", description="Evaluate a trained Sora workdir's checkpoint(s) on a split.",
        epilog="Overrides of the saved config: --config.KEY=VALUE (e.g. --config.data.eval_batch_size=64).")
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    which = parser.add_mutually_exclusive_group()
    inference.add_step_flag(which)
    which.add_argument("--all_checkpoints", action="store_true", help="evaluate every kept checkpoint")
    parser.add_argument("--split", default="validation", help="dataset split: validation (default) or test")
    parser.add_argument("--max_examples", type=int, default=0, help="evaluate only the first N examples (0 = all)")
    inference.add_decode_flags(parser)
    return parser.parse_args(rest), overrides


def _eval_batch_size(run: inference.LoadedRun) -> tuple[int, str | None]:
    """config.data.eval_batch_size rounded up to a multiple of the data-parallel devices and processes."""
    import jax
    import numpy as np

    size, multiple = run.config.data.eval_batch_size, int(np.lcm(run.data_parallel_size, jax.process_count()))
    if size % multiple == 0:
        return size, None
    rounded = -(-size // multiple) * multiple
    return rounded, (f"config.data.eval_batch_size={size} does not divide over {multiple} data-parallel devices; "
                     f"using {rounded}.")


def _write(directory: Path, result: EvalResult, options: Any) -> None:
    import jax

    if jax.process_index() != 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in result.predictions:
            f.write(json.dumps({"input": p["input"], "target": p["target"], "prediction": p["prediction"]},
                               ensure_ascii=False) + "\n")
    summary = {"step": result.step, "split": result.split, "examples": len(result.predictions),
               "decode": dataclasses.asdict(options), "metrics": result.metrics}
    (directory / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")


def format_metrics(metrics: Mapping[str, Any]) -> str:
    return " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def format_table(results: Sequence[EvalResult]) -> str:
    """A small table: one row per step, one column per metric."""
    names = list(results[0].metrics)
    header = ["step", *names]
    rows = [[str(r.step), *(f"{r.metrics.get(n, float('nan')):.4f}" if isinstance(r.metrics.get(n), float)
                            else str(r.metrics.get(n, "")) for n in names)] for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows])


def evaluate_workdir(workdir: str | Path, *, split: str = "validation", step: int | str | None = None,
                     all_checkpoints: bool = False, overrides: Mapping[str, Any] | None = None,
                     decode: Mapping[str, Any] | None = None, max_examples: int = 0,
                     echo: bool = True) -> list[EvalResult]:
    """Evaluate checkpoint `step` (default: the newest; "best": `<workdir>/best`), or every kept one, of `workdir`
    on `split`; write each one's predictions.jsonl and metrics.json under `<workdir>/eval/<split>_step<N>/` (or
    `<split>_best/`).

    `decode` holds keyword arguments of `inference.decode_options` (method, beam_size, max_length, ...).
    Every input check (split, step, decoding options, shapes) happens before the first compile.
    """
    from sora_jax.evaluation.evaluator import Evaluator
    from sora_jax.training.metrics_log import MetricsLog

    def say(message: str) -> None:
        if echo:
            print(message, flush=True)

    run = inference.load_workdir(workdir, overrides, step=step, restore=False)
    if echo:
        inference.print_notes(run)
    options = inference.decode_options(run.task, run.tokenizer, run.config, **(decode or {}))
    if max_examples < 0:
        raise SoraError(f"--max_examples={max_examples} must be >= 0 (0 = the whole split).")
    config = run.config.copy_and_resolve_references()
    config.data.eval_batch_size, batch_note = _eval_batch_size(run)
    if batch_note and echo:
        print(f"note: {batch_note}", file=sys.stderr, flush=True)
    # The evaluator's log is never written to: results go to <workdir>/eval/, not to training's metrics.jsonl.
    evaluator = Evaluator(run.model, run.task, run.make_builder(), run.tokenizer, config, run.mesh,
                          run.param_shardings, MetricsLog(run.workdir, enabled=False), decode_options=options)
    examples = len(evaluator.split_pairs(split))  # A split the dataset lacks is reported here.
    if max_examples:
        examples = min(examples, max_examples)
    steps = list(run.steps) if all_checkpoints else [run.steps[-1] if step is None else step]
    for current in steps:
        run.check_shapes(current)
    say(f"workdir {run.workdir} | task {run.task.name} | split {split} ({examples} examples) | decoding "
        f"{inference.describe_options(options)} | mesh {dict(run.mesh.shape)} | checkpoints "
        f"{', '.join(map(str, steps))}")
    results = []
    for current in steps:
        loaded = run.with_step(current)
        with loaded.activate():
            metrics, predictions = evaluator.evaluate(loaded.params, split, max_examples=max_examples)
        directory = run.workdir / "eval" / (f"{split}_best" if loaded.from_best else f"{split}_step{current}")
        result = EvalResult(loaded.step, split, metrics, predictions, directory)
        _write(directory, result, options)
        results.append(result)
        which = f"step {loaded.step} (best)" if loaded.from_best else f"step {loaded.step}"
        say(f"eval {split} @ {which}: {format_metrics(metrics)}")
        say(f"  wrote {directory / 'predictions.jsonl'} and metrics.json")
    if all_checkpoints:
        say(format_table(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of sora-eval; returns the process exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        evaluate_workdir(args.workdir, split=args.split, step=args.step, all_checkpoints=args.all_checkpoints,
                         overrides=overrides, decode=inference.decode_kwargs(args), max_examples=args.max_examples)
        return 0

    return inference.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
