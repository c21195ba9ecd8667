"""`sora-export`: a trained run's checkpoint in the Hugging Face T5 layout.

    sora-export --workdir=DIR|gs://... --out=DIR [--step=N|best] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sora_jax.cli import common


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (`sora-export`)."""
    parser = argparse.ArgumentParser(prog="sora-export", description="Export a Sora checkpoint to the Hugging Face "
                                                                     "T5 layout.")
    parser.add_argument("--workdir", required=True, help="a trained Sora workdir (local or gs://)")
    parser.add_argument("--out", required=True, help="output folder (created; local or gs://)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export in --out")
    common.add_step_flag(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from sora_jax.serving.export import export_workdir

        step = export_workdir(args.workdir, args.out, args.step, overwrite=args.overwrite)
        print(f"exported step {step} of {args.workdir} to {args.out} (Hugging Face T5 layout)")
        return 0

    return common.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
