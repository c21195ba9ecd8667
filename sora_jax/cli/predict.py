"""`sora-predict`: decode one input per line with a trained workdir.

    sora-predict --workdir=DIR|gs://... [--step=N|best] [--quantize=int8|int4] [--input=FILE] [--jsonl]
                 [--batch_size=32] [--raw]
                 [--method=greedy|beam|sample] [--beam_size=4] [--alpha=0.6] [--max_length=N]
                 [--temperature=T] [--top_k=K] [--top_p=P] [--seed=S] [--config.KEY=VALUE ...]

Reads one input per line from stdin (or --input FILE, which may be in a bucket) and writes one output per line to
stdout (line breaks inside a prediction become spaces), or with --jsonl one {"input", "prediction", "score"}
object per line. Empty lines give empty outputs; lines that are not valid UTF-8 are decoded with U+FFFD for the
bad bytes and reported by number on stderr. Decoding defaults are sora-eval's: beam 4 for translation tasks,
greedy otherwise.

--quantize=int8 (or int4) decodes with every matmul weight quantized after loading (weight-only PTQ); the param
bytes before and after are printed on stderr. --workdir may also be a quantized export (sora-export --quantize),
which is served with the scheme it was saved with.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, TextIO

from sora_jax.cli import common


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The flags, and the `--config.KEY=VALUE` overrides (parsed as train.py parses them)."""
    rest, overrides = common.split_config_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="sora-predict", description="Decode one input per line (stdin or --input) with a trained Sora workdir.",
        epilog="Overrides of the saved config: --config.KEY=VALUE (e.g. --config.data.max_input_length=256).")
    parser.add_argument("--workdir", required=True,
                        help="the training run's directory (local or gs://), or a quantized export's")
    common.add_step_flag(parser)
    common.add_quantize_flag(parser, "decode")
    parser.add_argument("--input", default=None, help="read inputs from this file instead of stdin")
    parser.add_argument("--jsonl", action="store_true", help='write {"input", "prediction", "score"} JSON lines')
    parser.add_argument("--batch_size", type=int, default=32, help="inputs decoded together (default 32)")
    parser.add_argument("--raw", action="store_true", help="do not apply the task's input formatting")
    common.add_decode_flags(parser)
    return common.parse_flags(parser, rest), overrides


def decoded_lines(stream: BinaryIO, not_utf8: list[int]) -> Iterator[str]:
    """The lines of a byte stream as text; the numbers of lines that are not valid UTF-8 go to `not_utf8`."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            not_utf8.append(number)
            yield raw.decode("utf-8", errors="replace")


def _line_list(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{', ...' if len(numbers) > 10 else ''}"


def predict_lines(predictor: Any, lines: Iterable[str], out: TextIO, *, batch_size: int, jsonl: bool,
                  raw: bool, decode: Mapping[str, Any]) -> dict[str, list[int]]:
    """Decode each line into one output line of `out` (flushed per batch) -> {"lines": [count], "empty": [line
    numbers], "truncated": [line numbers]}."""
    from sora_jax.errors import SoraError

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


def _binary_stdin() -> BinaryIO:
    return sys.stdin.buffer if hasattr(sys.stdin, "buffer") else io.BytesIO(sys.stdin.read().encode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of sora-predict; returns the process exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from sora_jax import paths
        from sora_jax.decoding import generator
        from sora_jax.errors import SoraError
        from sora_jax.serving.predictor import Predictor

        if args.input is not None and not paths.as_path(args.input).is_file():
            raise SoraError(f"--input {args.input} is not a file; give a text file with one input per line, or "
                            "leave --input out to read stdin.")
        decode = common.decode_kwargs(args)
        predictor = Predictor.from_workdir(args.workdir, args.step, quantize=args.quantize, **overrides)
        common.print_notes(predictor.run.notes)
        options = predictor.decode_options(**decode)  # Bad decoding flags fail before any input is read.
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(encoding="utf-8")  # Outputs are UTF-8 whatever the locale.
        not_utf8: list[int] = []
        source = paths.as_path(args.input).open("rb") if args.input is not None else _binary_stdin()
        with source:
            report = predict_lines(predictor, decoded_lines(source, not_utf8), sys.stdout,
                                   batch_size=args.batch_size, jsonl=args.jsonl, raw=args.raw, decode=decode)
        empty, truncated = report["empty"], report["truncated"]
        print(f"sora-predict: {report['lines'][0]} line(s), {report['lines'][0] - len(empty)} predicted with step "
              f"{predictor.step} ({generator.describe(options)})", file=sys.stderr)
        if not_utf8:
            print(f"sora-predict: {len(not_utf8)} input line(s) were not valid UTF-8 ({_line_list(not_utf8)}); their "
                  "undecodable bytes were replaced by U+FFFD before predicting", file=sys.stderr)
        if empty:
            print(f"sora-predict: {len(empty)} empty input line(s) gave empty output lines ({_line_list(empty)})",
                  file=sys.stderr)
        if truncated:
            print(f"sora-predict: {len(truncated)} input(s) longer than config.data.max_input_length="
                  f"{predictor.max_input_length} tokens were truncated ({_line_list(truncated)}); raise it with "
                  "--config.data.max_input_length=N", file=sys.stderr)
        return 0

    try:
        return common.run_cli(body)
    except BrokenPipeError:  # e.g. `sora-predict ... | head`: the reader left; nothing is wrong.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
