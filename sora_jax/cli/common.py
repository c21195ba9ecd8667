"""What every command line shares: start-up, the error runner, flag parsing (an unknown flag names the closest known
one), `--config.KEY=VALUE` overrides, `--step`, and the decoding flags of sora-eval and sora-predict.

Problems with the input print one line starting with "error:" and exit with status 2; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sora_jax.decoding.search import METHODS
from sora_jax.errors import closest
from sora_jax.workdir import BEST

DECODE_FLAGS = ("method", "beam_size", "alpha", "max_length", "temperature", "top_k", "top_p", "seed")


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, the `--config.KEY=VALUE` or `--config.KEY VALUE` overrides in order)."""
    overrides: dict[str, str] = {}
    rest = []
    args_iter = iter(argv)
    for arg in args_iter:
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            overrides[key] = value if eq else next(args_iter, "")
        else:
            rest.append(arg)
    return rest, overrides


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)`, except that an unknown flag or a stray argument is one "error:" line (exit status 2)
    that names the closest known flag, where argparse would print only "unrecognized arguments"."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"error: {_unknown_argument(parser, unknown[0])}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    return args


def _unknown_argument(parser: argparse.ArgumentParser, arg: str) -> str:
    if not arg.startswith("-"):
        return f"unexpected argument {arg!r}: {parser.prog} takes only flags (see {parser.prog} --help)."
    name = arg.split("=", 1)[0]
    # argparse has no public list of its flags; this mapping holds every option string, those of groups included.
    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    match = closest(name, known)
    return f"unknown flag {name}. " + (f"Did you mean {match}?" if match else f"See {parser.prog} --help.")


def start() -> None:
    """Quiet the libraries' expected noise: start-up (TensorFlow's C++ log, storage clients without credentials) and
    the background reports of a failed checkpoint write, which `run_cli` reports in one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from sora_jax import paths, write_failures

    paths.quiet_storage_logs()
    write_failures.quiet_background_reports()


def run_cli(body: Callable[[], int]) -> int:
    """Run a CLI body: SoraError -> 'error: <message>' on stderr and exit status 2."""
    start()
    from sora_jax.errors import SoraError
    from sora_jax.paths import StorageUnreachable

    try:
        return body()
    except StorageUnreachable as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Checkpoint writes still in flight to the lost storage run in orbax's non-daemon threads, which the
        # interpreter would wait for at exit (tensorstore retries for many minutes): nothing more can be written
        # there, so leave now.
        os._exit(2)
    except SoraError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def print_notes(notes: Sequence[str]) -> None:
    """Things the user should hear about (a mesh fallback, a skipped checkpoint), on stderr."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)


def _parse_step(text: str) -> int | str:
    if text == BEST:
        return BEST
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a checkpoint step number or '{BEST}', got {text!r}") from None


def add_step_flag(parser: Any) -> None:
    """--step (on a parser or an argument group): a checkpoint step number, or "best"."""
    parser.add_argument("--step", type=_parse_step, default=None,
                        help=f"checkpoint step, or '{BEST}' for the params kept at the best validation (default: the "
                             "newest)")


def add_quantize_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--quantize: weight-only PTQ of the loaded params; the scheme is checked when the run is loaded (a bad one is
    one 'error:' line naming the supported schemes)."""
    parser.add_argument("--quantize", default="", metavar="SCHEME",
                        help=f"{what} with int8 or int4 weights (post-training quantization of every matmul weight; "
                             "default: the float params)")


def add_decode_flags(parser: argparse.ArgumentParser) -> None:
    """The decoding flags of sora-eval and sora-predict."""
    group = parser.add_argument_group("decoding")
    group.add_argument("--method", choices=METHODS, default=None,
                       help="greedy | beam | sample (default: beam for translation tasks, greedy otherwise)")
    group.add_argument("--beam_size", type=int, default=4, help="beams for --method=beam (default 4)")
    group.add_argument("--alpha", type=float, default=0.6, help="beam length penalty exponent (default 0.6)")
    group.add_argument("--max_length", type=int, default=None,
                       help="most tokens to generate, EOS included (default: longest label + 1 for "
                            "classification, else config.data.max_target_length)")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    group.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    group.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed")


def decode_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The decode flags as keyword arguments of `decoder.task_decode_options` / `Predictor.predict`."""
    return {name: getattr(args, name) for name in DECODE_FLAGS}
