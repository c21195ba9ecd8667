"""Command line of `train.py` / `sora-train`.

    python train.py [--config=configs/NAME.py[:ARG]] [--workdir=DIR] [--config.KEY=VALUE ...]

Problems with the input (unknown keys, wrong types, a mesh that doesn't fit, a mismatched workdir, a NaN loss)
print one line starting with "error:" and exit with status 2; tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.py"


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


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The known flags and the config overrides."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train a Sora encoder-decoder.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="config file, optionally with an argument: configs/NAME.py[:ARG]")
    parser.add_argument("--workdir", default="", help="run directory (default: runs/<config name>)")
    parser.add_argument("--dry_run", action="store_true",
                        help="show the mesh, parameters, shardings and memory of the compiled step, then exit")
    parser.add_argument("--coordinator_address", default=None, help="multi-process: host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None, help="multi-process: number of processes")
    parser.add_argument("--process_id", type=int, default=None, help="multi-process: this process's index")
    rest, overrides = split_config_overrides(argv)
    return parser.parse_args(rest), overrides


def default_workdir(config_spec: str) -> Path:
    """runs/<config name>[_<arg>]: the same command twice resumes (or reports a finished run)."""
    path, _, arg = config_spec.partition(":")
    return Path("runs") / (Path(path).stem + (f"_{arg}" if arg else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, configure, run; returns the process exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from sora_jax import config as config_lib
    from sora_jax import distributed
    from sora_jax.errors import SoraError
    from sora_jax.training.dry_run import dry_run
    from sora_jax.training.loop import run

    try:
        config = config_lib.load_config_file(args.config)
        config_lib.apply_overrides(config, overrides)
        config_lib.validate(config)
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        if args.dry_run:
            dry_run(config)
            return 0
        workdir = Path(args.workdir) if args.workdir else default_workdir(args.config)
        run(config, workdir)
    except SoraError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
