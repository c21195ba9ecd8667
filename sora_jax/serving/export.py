"""Export a trained run's params to the Hugging Face T5 layout (config.json, model.safetensors, spiece.model), or
with quantized weights to a folder Sora serves (`export_quantized`; layout in sora_jax/workdir/quantized.py).

The Hugging Face export loads with `transformers.T5ForConditionalGeneration.from_pretrained(out)` (a LoRA
run's adapters are merged into their kernels first, so it is a plain model); the quantized one with
`sora-predict --workdir=OUT` or `Predictor.from_workdir(out)`.
"""

from __future__ import annotations

import jax

from sora_jax import checkpoint, paths
from sora_jax import config as config_lib
from sora_jax.compression import merge_lora, save_quantized_params
from sora_jax.errors import SoraError
from sora_jax.interop import save_hf_t5
from sora_jax.workdir import BEST, Workdir, load_workdir, quantized
from sora_jax.workdir import directory as directory_lib
from sora_jax.workdir.loaded import checkpoint_steps


def check_out_dir(out: str, overwrite: bool) -> None:
    """A SoraError when `out` is a file, or a folder that is not empty (unless overwrite)."""
    target = paths.as_path(out)
    paths.check_reachable(target, "--out")
    if target.exists() and not target.is_dir():
        raise SoraError(f"--out {target} is a file; give a folder path (it is created).")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise SoraError(f"--out {target} is not empty; give a new or empty folder, or pass --overwrite to replace "
                        "the files of an earlier export there.")


def export_workdir(workdir: str, out: str, step: int | str | None = None, *, overwrite: bool = False) -> int:
    """Write checkpoint `step` (default: the newest; "best": `<workdir>/best`) of `workdir` to `out`; return the
    training step exported. Reads only params, as host arrays: export needs no devices of the saving mesh (a QLoRA
    run's are restored onto this machine's devices and merged there)."""
    work = Workdir(workdir)
    config, _ = work.load_config()
    check_out_dir(out, overwrite)
    if config.lora.base_quantization:
        # A QLoRA checkpoint's base is qwix's quantized arrays, which only a restore into the QLoRA model's own
        # layout reads back; load_workdir does that and merges (dequantized base + adapters) on devices.
        run = load_workdir(work, step=step)
        save_hf_t5(out, run.model_config, jax.device_get(run.params), run.tokenizer)
        return run.step
    if step == BEST:
        step, params_item = checkpoint.BestCheckpoint.saved(work.best_dir)
        key = None
    else:
        steps = checkpoint_steps(work, config)
        step = steps[-1] if step is None else step
        if step not in steps:
            raise SoraError(f"there is no checkpoint step {step} in {work.checkpoint_dir}; available: "
                            f"{', '.join(map(str, steps))}.")
        params_item, key = work.checkpoint_dir / str(step) / "state", "params"
    tokenizer = work.load_tokenizer(config)
    model_config = config_lib.resolve_model_config(config.model, tokenizer.vocab_size)
    try:
        saved = checkpoint.read_as_numpy(params_item)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint is the user's to fix, not a bug.
        raise SoraError(f"checkpoint {params_item.parent} cannot be read ({type(e).__name__}: {paths.first_line(e)});"
                        " pick another --step.") from None
    params = saved if key is None else saved[key]
    if config.lora.rank:  # A LoRA run saves base and adapters: export the plain model W + alpha / rank * A @ B.
        params = jax.device_get(merge_lora(params, alpha=config.lora.alpha))
    save_hf_t5(out, model_config, params, tokenizer)
    return step


def export_quantized(workdir: str, out: str, step: int | str | None = None, *, scheme: str,
                     overwrite: bool = False) -> tuple[int, str]:
    """Write checkpoint `step` (default: the newest; "best") of `workdir` with `scheme` ("int8", "int4") weights
    to the folder `out` (local or gs://), as a quantized export -> (the training step exported, the param bytes note).

    The params are quantized as `load_workdir(workdir, quantize=scheme)` quantizes them, and saved as they are
    (int qvalues, float scales), so the export serves exactly the in-memory PTQ model's outputs.
    """
    quantized.check_scheme(scheme)
    target = paths.as_path(out)
    check_out_dir(out, overwrite)
    source = paths.as_path(workdir)
    if quantized.read_manifest(source) is not None:
        raise SoraError(f"{workdir} is already a quantized export; export the training run it came from.")
    run = load_workdir(workdir, step=step, quantize=scheme)
    config = run.config.copy_and_resolve_references()
    config.tokenizer.model_path = ""  # The export carries its own tokenizer.model.
    params_dir = target / quantized.PARAMS_DIR
    if overwrite and params_dir.exists():
        paths.remove_tree(params_dir)
    target.mkdir(parents=True, exist_ok=True)
    paths.write_text(target / "config.json",
                     config_lib.to_json(config, **{directory_lib.FORMAT_KEY: directory_lib.FORMAT}))
    paths.write_bytes(target / "tokenizer.model", run.tokenizer.model_proto())
    save_quantized_params(params_dir, run.params, use_ocdbt=run.config.checkpoint_ocdbt)
    # Written last: a folder without it is not read as an export, so an interrupted export is not served.
    paths.write_text(target / quantized.MANIFEST_FILE, quantized.manifest_text(scheme, run.step, run.from_best,
                                                                               str(source)))
    return run.step, quantized.bytes_note(scheme, run.abstract_params, run.params)
