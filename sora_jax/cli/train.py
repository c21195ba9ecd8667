"""Command line of `train.py` / `sora-train`.

    python train.py [--config=configs/NAME.py[:ARG]] [--workdir=DIR|gs://BUCKET/PATH] [--config.KEY=VALUE ...]
    python train.py --config=... --dry_run [--topology=v5p-128 [--num_slices=N] [--aot_out=DIR]]
    python train.py --config=... --aot_in=DIR      # on that slice: run the step compiled ahead of time

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
    aot = parser.add_argument_group("ahead-of-time compilation for a Cloud TPU slice (needs libtpu: pip install -e "
                                    "'.[tpu]'; no TPU is opened)")
    aot.add_argument("--topology", default="",
                     help="with --dry_run: compile for this slice instead of the local devices: a gcloud accelerator "
                          "type (v4-8, v5litepod-16, v5p-128, v6e-64) or GEN:AxB[xC] (v5p:4x4x8); or NVIDIA cards "
                          "h100, h200x8, ... (memory only; needs the CUDA plugin)")
    aot.add_argument("--num_slices", type=int, default=1, help="with --topology: that many slices (multi-slice, "
                                                               "config.mesh.dcn_* span them)")
    aot.add_argument("--aot_out", default="", metavar="DIR",
                     help="with --topology: save the compiled train step (and its manifest) in DIR")
    aot.add_argument("--aot_in", default="", metavar="DIR",
                     help="train with the step saved by --aot_out instead of compiling it (refused unless jax, "
                          "libtpu, the devices, the mesh and the config match)")
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
        from sora_jax.errors import SoraError
        from sora_jax.training.dry_run import dry_run
        from sora_jax.training.loop import run

        if (args.topology or args.num_slices != 1 or args.aot_out) and not (args.dry_run and args.topology):
            raise SoraError("--topology, --num_slices and --aot_out compile ahead of time: use them together with "
                            "--dry_run (--num_slices and --aot_out need --topology).")
        if args.aot_in and args.dry_run:
            raise SoraError("--aot_in is for a training run; --dry_run compiles the step itself.")
        config = config_lib.load_config_file(args.config)
        config_lib.apply_overrides(config, overrides)
        config_lib.validate(config)
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        workdir = args.workdir or default_workdir(args.config)
        if args.dry_run:
            from sora_jax.workdir import Workdir

            data_dir = str(Workdir(workdir).data_dir(config.data.data_dir))
            if args.topology:
                from sora_jax.aot.dry_run import dry_run_on_topology

                dry_run_on_topology(config, args.topology, args.num_slices, data_dir, args.aot_out)
            else:
                dry_run(config, data_dir)
            return 0
        run(config, workdir, aot_in=args.aot_in)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
