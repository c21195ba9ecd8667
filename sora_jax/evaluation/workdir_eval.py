"""Evaluate a trained run's checkpoints on a split and write the results into its run directory.

    results = evaluate_workdir("runs/default", split="test")          # newest readable checkpoint
    results = evaluate_workdir("gs://b/runs/x", all_checkpoints=True)  # every kept one

Writes (under `<split>_best/` for step="best"; a later evaluation of the same split and step replaces them)

    <workdir>/eval/<split>_step<N>/predictions.jsonl   one {"input", "target", "prediction"} per example, in order
    <workdir>/eval/<split>_step<N>/metrics.json        {"step", "split", "examples", "decode", "metrics"}

(`<split>_step<N>_int8/` with quantize="int8": the quantized model's results do not replace the float ones.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from sora_jax import distributed, paths
from sora_jax.data.options import DataOptions
from sora_jax.decoding import generator
from sora_jax.errors import SoraError
from sora_jax.evaluation.evaluator import Evaluator, format_metrics
from sora_jax.workdir import LoadedRun, load_workdir


@dataclasses.dataclass
class EvalResult:
    """One checkpoint's evaluation on one split."""

    step: int
    split: str
    metrics: dict[str, float]
    predictions: list[dict[str, str]]
    directory: epath.Path  # Where predictions.jsonl and metrics.json were written.
    quantization: str = ""  # The weights' scheme ("int8", "int4"), or "" for the float params.


def _eval_batch_size(run: LoadedRun) -> tuple[int, str | None]:
    """config.data.eval_batch_size rounded up to a multiple of the data-parallel devices and processes."""
    size, multiple = run.config.data.eval_batch_size, int(np.lcm(run.data_parallel_size, jax.process_count()))
    if size % multiple == 0:
        return size, None
    rounded = -(-size // multiple) * multiple
    return rounded, (f"config.data.eval_batch_size={size} does not divide over {multiple} data-parallel devices; "
                     f"using {rounded}.")


def _write(result: EvalResult, options: Any) -> None:
    lines = "".join(json.dumps({"input": p["input"], "target": p["target"], "prediction": p["prediction"]},
                               ensure_ascii=False) + "\n" for p in result.predictions)
    summary = {"step": result.step, "split": result.split, "examples": len(result.predictions),
               "decode": dataclasses.asdict(options), "metrics": result.metrics}
    if result.quantization:
        summary["quantization"] = result.quantization

    def write() -> None:
        with paths.storage_errors(f"writing {result.directory}"):
            paths.write_text(result.directory / "predictions.jsonl", lines)
            paths.write_text(result.directory / "metrics.json", json.dumps(summary, indent=2, ensure_ascii=False)
                             + "\n")

    distributed.leader_then_all("eval outputs", write)


def format_table(results: Sequence[EvalResult]) -> str:
    """A small table: one row per step, one column per metric."""
    names = list(results[0].metrics)
    header = ["step", *names]
    rows = [[str(r.step), *(f"{r.metrics.get(n, float('nan')):.4f}" if isinstance(r.metrics.get(n), float)
                            else str(r.metrics.get(n, "")) for n in names)] for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows])


def evaluate_workdir(workdir: str, *, split: str = "validation", step: int | str | None = None,
                     all_checkpoints: bool = False, overrides: Mapping[str, Any] | None = None,
                     decode: Mapping[str, Any] | None = None, max_examples: int = 0, quantize: str = "",
                     say: Callable[[str], None] = print, note: Callable[[str], None] = print) -> list[EvalResult]:
    """Evaluate checkpoint `step` (default: the newest readable one; "best": `<workdir>/best`), or every kept
    one, of `workdir` on `split`, and write each one's predictions and metrics under `<workdir>/eval/`.

    `decode` holds keyword arguments of `decoder.task_decode_options` (method, beam_size, max_length, ...).
    `quantize` ("int8", "int4"; "" = float) evaluates each checkpoint with its weights quantized (PTQ).
    Every input check (split, step, decoding options, shapes, scheme) happens before the first compile. `say`
    gets the progress lines, `note` the warnings (and the quantized param bytes).
    """
    run = load_workdir(workdir, overrides, step=step, restore=False, quantize=quantize)
    for text in run.notes:
        note(text)
    options = generator.task_decode_options(run.task, run.tokenizer, run.config.data.max_target_length,
                                              **(decode or {}))
    if max_examples < 0:
        raise SoraError(f"--max_examples={max_examples} must be >= 0 (0 = the whole split).")
    eval_batch_size, batch_note = _eval_batch_size(run)
    data_cfg = dataclasses.replace(DataOptions.from_config(run.config.data), eval_batch_size=eval_batch_size)
    if batch_note:
        note(batch_note)
    evaluator = Evaluator(run.model, run.task, run.make_builder(), run.tokenizer, data_cfg, run.mesh,
                          run.param_shardings, decode_options=options)
    examples = len(evaluator.split_pairs(split))  # A split the dataset lacks is reported here.
    if max_examples:
        examples = min(examples, max_examples)
    steps = list(run.steps) if all_checkpoints else [step]
    for current in steps:
        run.check_shapes(run.steps[-1] if current is None else current)
    shown = "newest" if steps == [None] else ", ".join(map(str, steps))
    weights = f", {run.quantization} weights" if run.quantization else ""
    suffix = f"_{run.quantization}" if run.quantization else ""  # Quantized results sit next to the float ones.
    say(f"workdir {run.workdir} | task {run.task.name} | split {split} ({examples} examples) | decoding "
        f"{generator.describe(options)} | mesh {dict(run.mesh.shape)} | checkpoints {shown}{weights}")
    results = []
    for current in steps:
        loaded = run.with_step(current)
        for text in loaded.notes[len(run.notes):]:
            note(text)
        with loaded.activate():
            metrics, predictions = evaluator.evaluate(loaded.params, split, max_examples=max_examples)
        label = ("best" if loaded.from_best else f"step{loaded.step}") + suffix
        result = EvalResult(loaded.step, split, metrics, predictions, run.workdir.eval_dir(split, label),
                            run.quantization)
        _write(result, options)
        results.append(result)
        which = (f"step {loaded.step} (best)" if loaded.from_best else f"step {loaded.step}") + weights
        say(f"eval {split} @ {which}: {format_metrics(metrics)}")
        say(f"  wrote {result.directory / 'predictions.jsonl'} and metrics.json")
    if all_checkpoints:
        say(format_table(results))
    return results
