"""Evaluation of a split: teacher-forced loss and token accuracy, plus metrics on decoded text.

Training's periodic eval decodes greedily; `sora-eval` passes other DecodeOptions (beam search, sampling)
through the same code.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from sora_jax import sharding
from sora_jax.data import builders, pipeline
from sora_jax.data.tasks import Task
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.decoding import DecodeOptions, decode
from sora_jax.errors import SoraError
from sora_jax.evaluation.metrics import text_metrics
from sora_jax.model import EncoderDecoder
from sora_jax.training.metrics_log import MetricsLog
from sora_jax.training.step import compile_eval_step


def default_decode_length(task: Task, tokenizer: Tokenizer, max_target_length: int) -> int:
    """Tokens to decode: for a classification task with labels, the longest label + EOS (labels are a few
    pieces long, so classification evals stay cheap); otherwise `max_target_length`."""
    if task.kind == "classification" and task.labels:
        return max(len(ids) for ids in tokenizer.encode(list(task.labels))) + 1
    return max_target_length


class Evaluator:
    """Evaluates params on a split of the task; the compiled steps are built once and reused.

    `decode_options` (default: greedy, `default_decode_length` tokens) say how predictions are decoded.
    """

    def __init__(self, model: EncoderDecoder, task: Task, builder: Any, tokenizer: Tokenizer,
                 config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, param_shardings: Any,
                 log: MetricsLog, *, decode_options: DecodeOptions | None = None):
        self.model, self.task, self.tokenizer, self.mesh, self.log = model, task, tokenizer, mesh, log
        self._builder = builder
        self._data_cfg = config.data
        self._eval_step = compile_eval_step(model, param_shardings, mesh)
        if decode_options is None:
            decode_options = DecodeOptions(
                method="greedy", max_length=default_decode_length(task, tokenizer, config.data.max_target_length))
        self.decode_options = decode_options
        self._decode = jax.jit(
            functools.partial(decode, options=decode_options, model=model),
            in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
            out_shardings=sharding.replicated(mesh),
        )

    def split_pairs(self, split: str) -> Any:
        """Text pairs of `split`; a split the dataset lacks is a SoraError listing the ones it has."""
        available = list(self._builder.info.splits.keys())
        if split not in available:
            raise SoraError(f"task {self.task.name} has no {split!r} split; it has {', '.join(available)}.")
        return pipeline.text_pairs(builders.data_source(self._builder, split), self.task.to_text_pair)

    def evaluate(self, params: Any, split: str, *, max_examples: int = 0) -> tuple[dict[str, float], list[dict]]:
        """Metrics over `split` (or its first `max_examples`), and the decoded predictions in order."""
        cfg = self._data_cfg
        totals = None
        predictions: list[dict] = []
        for batch in pipeline.eval_batches(
                self.split_pairs(split), self.tokenizer, global_batch_size=cfg.eval_batch_size,
                max_input_length=cfg.max_input_length, max_target_length=cfg.max_target_length,
                max_examples=max_examples, process_index=jax.process_index(),
                process_count=jax.process_count()):
            arrays = sharding.global_batch(batch.arrays, self.mesh)
            sums = self._eval_step(params, arrays)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            decoded = np.asarray(jax.device_get(self._decode(params, arrays["encoder_input_tokens"])))
            texts = self.tokenizer.decode(decoded[: len(batch.targets)])
            predictions += [{"input": i, "target": t, "prediction": p}
                            for i, t, p in zip(batch.inputs, batch.targets, texts, strict=True)]
        totals = jax.device_get(totals)
        weight = max(float(totals["weight_sum"]), 1.0)
        metrics = {"loss": float(totals["loss_sum"]) / weight, "accuracy": float(totals["correct_sum"]) / weight}
        metrics.update(text_metrics(self.task.kind, [p["prediction"] for p in predictions],
                                    [p["target"] for p in predictions], labels=self.task.labels,
                                    target_language=self.task.target_language))
        metrics["examples"] = len(predictions)
        return metrics, predictions

    def log_eval(self, step: int, params: Any, split: str, *, max_examples: int = 0) -> dict[str, float]:
        """Evaluate, write the metrics event, print a summary line and a few sample predictions."""
        metrics, predictions = self.evaluate(params, split, max_examples=max_examples)
        self.log.write(step, split, metrics)
        shown = " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        self.log.print(f"eval {split} @ step {step}: {shown}")
        samples = predictions[: self._data_cfg.num_sample_predictions]
        if samples:
            lines = [f"  input: {p['input'][:120]}\n  target: {p['target']}\n  prediction: {p['prediction']}"
                     for p in samples]
            self.log.text(step, f"{split}/samples", "\n".join(lines))
        return metrics
