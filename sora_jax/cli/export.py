"""`sora-export`: a trained run's checkpoint in the Hugging Face layout (T5, T5Gemma, T5Gemma 2) or quantized.

    sora-export --workdir=DIR|gs://... --out=DIR [--step=N|best] [--overwrite]
    sora-export --workdir=DIR|gs://... --out=DIR|gs://... --quantize=int8|int4 [--step=N|best] [--overwrite]

With --quantize the export is Sora's own (config.json, tokenizer.model, quantized.json, params/ with int
weights), served by `sora-predict --workdir=OUT` / `sora-eval --workdir=OUT` exactly as the in-memory
`--quantize` model; the HF layout has no place for qwix's int weights and scales.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sora_jax.cli import common


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (`sora-export`)."""
    parser = argparse.ArgumentParser(prog="sora-export", description="Export a Sora checkpoint to the Hugging Face "
                                                                     "layout (T5, T5Gemma or T5Gemma 2).")
    parser.add_argument("--workdir", required=True, help="a trained Sora workdir (local or gs://)")
    parser.add_argument("--out", required=True, help="output folder (created; local or gs://)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export in --out")
    common.add_step_flag(parser)
    parser.add_argument("--quantize", default="", metavar="SCHEME",
                        help="write int8 or int4 weights (post-training quantization) in Sora's own layout, served "
                             "by sora-predict --workdir=OUT (default: float params, Hugging Face layout)")
    args = common.parse_flags(parser, sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from sora_jax.serving.export import export_quantized, export_workdir

        if args.quantize:
            step, sizes = export_quantized(args.workdir, args.out, args.step, scheme=args.quantize,
                                           overwrite=args.overwrite)
            print(f"exported step {step} of {args.workdir} to {args.out} ({sizes}); serve it with "
                  f"sora-predict --workdir={args.out}")
            return 0
        step = export_workdir(args.workdir, args.out, args.step, overwrite=args.overwrite)
        print(f"exported step {step} of {args.workdir} to {args.out} (Hugging Face layout)")
        return 0

    return common.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
