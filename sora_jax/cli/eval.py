"""`sora-eval` / `python -m sora_jax.cli.eval`: evaluate a trained workdir's checkpoints on a split.

    sora-eval --workdir=DIR|gs://... [--step=N|best | --all_checkpoints] [--split=validation|test]
              [--quantize=int8|int4] [--max_examples=N] [--method=greedy|beam|sample] [--beam_size=4] [--alpha=0.6]
              [--max_length=N] [--temperature=T] [--top_k=K] [--top_p=P] [--seed=S] [--config.KEY=VALUE ...]

Restores the params of the newest readable checkpoint (or --step, --step=best for `DIR/best`, or each kept one
with --all_checkpoints), decodes the whole split in padded batches of config.data.eval_batch_size over the data
axes of the mesh, computes the task's metrics (sora_jax/evaluation/metrics.py) and the teacher-forced loss,
prints them and writes them under DIR/eval/ (see sora_jax/evaluation/workdir_eval.py). With --quantize=int8 (or
int4) each checkpoint's params are quantized after loading (weight-only PTQ) and evaluated that way; the results go
to DIR/eval/<split>_step<N>_int8/ and the param bytes before and after are printed.

Decoding defaults: beam search (4 beams, length penalty alpha 0.6) for translation tasks, where it gains
BLEU; greedy for classification and generation. --max_length defaults to the longest label + 1 token for
classification tasks, else config.data.max_target_length. The default split is validation (select
checkpoints on it; report --split=test once).

Problems with the input (no checkpoint, a missing step, a config whose shapes no longer match the checkpoint,
a split the dataset lacks, bad flags) print one line starting with "error:" and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sora_jax.cli import common


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The flags, and the `--config.KEY=VALUE` overrides (parsed as train.py parses them)."""
    rest, overrides = common.split_config_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="sora-eval", description="Evaluate a trained Sora workdir's checkpoint(s) on a split.",
        epilog="Overrides of the saved config: --config.KEY=VALUE (e.g. --config.data.eval_batch_size=64).")
    parser.add_argument("--workdir", required=True, help="the training run's directory (local or gs://)")
    which = parser.add_mutually_exclusive_group()
    common.add_step_flag(which)
    which.add_argument("--all_checkpoints", action="store_true", help="evaluate every kept checkpoint")
    parser.add_argument("--split", default="validation", help="dataset split: validation (default) or test")
    parser.add_argument("--max_examples", type=int, default=0, help="evaluate only the first N examples (0 = all)")
    common.add_quantize_flag(parser, "evaluate")
    common.add_decode_flags(parser)
    return common.parse_flags(parser, rest), overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of sora-eval; returns the process exit status."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from sora_jax.evaluation.workdir_eval import evaluate_workdir

        evaluate_workdir(args.workdir, split=args.split, step=args.step, all_checkpoints=args.all_checkpoints,
                         overrides=overrides, decode=common.decode_kwargs(args), max_examples=args.max_examples,
                         quantize=args.quantize,
                         say=lambda line: print(line, flush=True), note=lambda text: common.print_notes([text]))
        return 0

    return common.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
