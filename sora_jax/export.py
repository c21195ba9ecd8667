"""Export a Sora checkpoint to the Hugging Face T5 layout (config.json, model.safetensors, spiece.model).

    python -m sora_jax.export --workdir=runs/default --out=runs/default/hf [--step=N|best]

The result loads with `transformers.T5ForConditionalGeneration.from_pretrained(out)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from sora_jax import checkpoint
from sora_jax.config import load_saved_config
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.errors import SoraError
from sora_jax.inference import BEST, add_step_flag
from sora_jax.interop import save_hf_t5
from sora_jax.training.workdir import resolve_model_config


def export_workdir(workdir: Path, out: Path, step: int | str | None = None) -> int:
    """Write checkpoint `step` (default: the newest; "best": `<workdir>/best`) of `workdir` to `out`; return the
    training step exported."""
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise SoraError(f"{workdir} has no config.json: it is not a Sora workdir (train first, or fix --workdir).")
    config = ml_collections.ConfigDict(load_saved_config(config_file))
    if step == BEST:
        step = checkpoint.BestCheckpoint.saved_step(workdir / BEST)
        params_item, key = workdir / BEST / "params", None
    else:
        steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
        if not steps:
            raise SoraError(f"no checkpoint in {workdir / 'checkpoints'}: train first.")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise SoraError(f"there is no checkpoint step {step} in {workdir / 'checkpoints'}; available: {steps}.")
        params_item, key = workdir / "checkpoints" / str(step) / "state", "params"
    tokenizer_path = Path(config.tokenizer.model_path or workdir / "tokenizer.model")
    tokenizer = Tokenizer.load(tokenizer_path)
    model_config = resolve_model_config(config.model, tokenizer.vocab_size)
    # Host arrays whatever mesh saved them: export needs no devices.
    saved = checkpoint.read_as_numpy(params_item)
    params = saved if key is None else saved[key]
    save_hf_t5(out, model_config, params, tokenizer)
    return step


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (`sora-export`)."""
    parser = argparse.ArgumentParser(prog="sora-export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained Sora workdir")
    parser.add_argument("--out", required=True, help="output directory (created)")
    add_step_flag(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        step = export_workdir(Path(args.workdir), Path(args.out), args.step)
    except SoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported step {step} of {args.workdir} to {args.out} (Hugging Face T5 layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
