"""Evaluation of a split: teacher-forced loss and token accuracy, plus the task's metrics on decoded text.

Training's periodic eval decodes greedily; `sora-eval` passes other DecodeOptions (beam search, sampling)
through the same code and the same `Generator` the Predictor uses.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sora_jax import sharding
from sora_jax.data import builders, pipeline
from sora_jax.data.options import DataOptions
from sora_jax.data.tasks import Task
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.decoding.generator import Generator, default_max_length
from sora_jax.decoding.search import DecodeOptions
from sora_jax.errors import SoraError
from sora_jax.evaluation.eval_step import compile_eval_step
from sora_jax.evaluation.metrics import text_metrics
from sora_jax.model import EncoderDecoder

TEXT_EVAL_ROWS = 1024  # Denoised rows a pretraining eval scores when max_examples is 0.


class Evaluator:
    """Evaluates params on a split of the task; the compiled steps are built once and reused.

    `decode_options` (default: greedy, `default_max_length` tokens) say how predictions are decoded.
    """

    def __init__(self, model: EncoderDecoder, task: Task, builder: Any, tokenizer: Tokenizer, data_cfg: DataOptions,
                 mesh: jax.sharding.Mesh, param_shardings: Any, *, decode_options: DecodeOptions | None = None,
                 objective: pipeline.Objective | None = None, share_with: Evaluator | None = None):
        self.model, self.task, self.tokenizer, self.mesh = model, task, tokenizer, mesh
        self._builder = builder
        self._data_cfg = data_cfg
        self.objective = objective
        if share_with is not None:  # Another task of the same model (a mixture): reuse its compiled steps.
            self._eval_step, self._generator = share_with._eval_step, share_with._generator
        else:
            self._eval_step = compile_eval_step(model, param_shardings, mesh)
            self._generator = Generator(model, param_shardings, mesh)
        if decode_options is None:
            decode_options = DecodeOptions(
                method="greedy", max_length=default_max_length(task, tokenizer, data_cfg.max_target_length))
        self.decode_options = decode_options

    @property
    def splits(self) -> list[str]:
        """The splits of the task's dataset."""
        return list(self._builder.info.splits.keys())

    def split_pairs(self, split: str) -> Any:
        """Text pairs of `split`; a split the dataset lacks is a SoraError listing the ones it has."""
        available = list(self._builder.info.splits.keys())
        if split not in available:
            raise SoraError(f"task {self.task.name} has no {split!r} split; it has {', '.join(available)}.")
        return pipeline.text_pairs(builders.data_source(self._builder, split), self.task.to_text_pair)

    def _batches(self, split: str, max_examples: int) -> Any:
        cfg = self._data_cfg
        if self.objective is not None:
            rows = max_examples or TEXT_EVAL_ROWS
            return pipeline.text_eval_batches(
                self.split_pairs(split), self.tokenizer, self.objective, global_batch_size=cfg.eval_batch_size,
                max_input_length=cfg.max_input_length, max_target_length=cfg.max_target_length,
                num_batches=max(1, -(-rows // cfg.eval_batch_size)), process_index=jax.process_index(),
                process_count=jax.process_count())
        return pipeline.eval_batches(
                self.split_pairs(split), self.tokenizer, global_batch_size=cfg.eval_batch_size,
                max_input_length=cfg.max_input_length, max_target_length=cfg.max_target_length,
                max_examples=max_examples, process_index=jax.process_index(),
                process_count=jax.process_count())

    def evaluate(self, params: Any, split: str, *, max_examples: int = 0) -> tuple[dict[str, float], list[dict]]:
        """Metrics over `split` (or its first `max_examples`), and the decoded predictions in order. A text task
        (pretraining) gets the teacher-forced loss and token accuracy of fixed denoised batches, no decoding."""
        totals = None
        predictions: list[dict] = []
        for batch in self._batches(split, max_examples):
            arrays = sharding.global_batch(batch.arrays, self.mesh)
            sums = self._eval_step(params, arrays)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            if self.objective is not None:
                continue
            output = self._generator.decode(params, arrays["encoder_input_tokens"], self.decode_options)
            texts = self.tokenizer.decode(np.asarray(jax.device_get(output))[: len(batch.targets)])
            predictions += [{"input": i, "target": t, "prediction": p}
                            for i, t, p in zip(batch.inputs, batch.targets, texts, strict=True)]
        totals = jax.device_get(totals)
        weight = max(float(totals["weight_sum"]), 1.0)
        metrics = {"loss": float(totals["loss_sum"]) / weight,
                   "token_accuracy": float(totals["correct_sum"]) / weight}
        if self.objective is not None:
            return {**metrics, "target_tokens": int(totals["weight_sum"])}, []
        metrics.update(text_metrics(self.task.kind, [p["prediction"] for p in predictions],
                                    [p["target"] for p in predictions], labels=self.task.labels,
                                    target_language=self.task.target_language))
        metrics["examples"] = len(predictions)
        return metrics, predictions


def format_metrics(metrics: dict[str, Any]) -> str:
    """'loss 0.2990 | token_accuracy 0.9242 | exact_match 0.8122 | examples 868'."""
    return " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
