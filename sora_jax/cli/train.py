"""Command line of `train.py` / `sora-train`.

    python train.py [--config=configs/NAME.py[:ARG]] [--workdir=DIR|gs://BUCKET/PATH] [--config.KEY=VALUE ...]

Problems with the input (unknown keys, wrong types, a mesh that doesn't fit, a mismatched workdir, an unreachable
bucket, a NaN loss) print one line starting with "error:" and exit with status 2; tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sora_jax.cli.common import parse_flags, run_cli, split_config_overrides

# Inside the package, so that sora-train finds it in a non-editable install too.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "default.py"


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The known flags and the config overrides."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train a Sora encoder-decoder.",
                                     epilog="Config overrides: --config.KEY=VALUE; every key and its default is "
                                            "in sora_jax/config/schema.py:base_config() and the README's table.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="config file, optionally with an argument: configs/NAME.py[:ARG]")
    parser.add_argument("--workdir", default="",
                        help="run directory, local or gs://BUCKET/PATH (default: runs/<config name>)")
    parser.add_argument("--dry_run", action="store_true",
                        help="show the mesh, parameters, shardings and memory of the compiled step, then exit")
    parser.add_argument("--coordinator_address", default=None, help="multi-process: host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None, help="multi-process: number of processes")
    parser.add_argument("--process_id", type=int, default=None, help="multi-process: this process's index")
    rest, overrides = split_config_overrides(argv)
    return parse_flags(parser, rest), overrides


def default_workdir(config_spec: str) -> str:
    """runs/<config name>[_<arg>]: the same command twice resumes (or reports a finished run)."""
    path, _, arg = config_spec.partition(":")
    return str(Path("runs") / (Path(path).stem + (f"_{arg}" if arg else "")))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, configure, run; returns the process exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from sora_jax import config as config_lib
        from sora_jax import distributed
        from sora_jax.training.dry_run import dry_run
        from sora_jax.training.loop import run

        config = config_lib.load_config_file(args.config)
        config_lib.apply_overrides(config, overrides)
        config_lib.validate(config)
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        workdir = args.workdir or default_workdir(args.config)
        if args.dry_run:
            from sora_jax.workdir import Workdir

            dry_run(config, str(Workdir(workdir).data_dir(config.data.data_dir)))
            return 0
        run(config, workdir)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
