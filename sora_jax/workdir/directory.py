"""The run directory: one place that knows its layout and reads and writes its artifacts, locally or in a bucket.

```
<workdir>/config.json           the resolved config (model sizes filled in), with the layout's format number
<workdir>/tokenizer.model       the sentencepiece model (trained once by process 0, reused on resume)
<workdir>/checkpoints/<step>/   orbax checkpoints: train state + data-iterator state
<workdir>/best/                 the params of the best validation so far (config.best_metric)
<workdir>/corrupt_checkpoints/  checkpoints that could not be read, moved aside for inspection
<workdir>/metrics.jsonl         one JSON object per train-log / eval event
<workdir>/tensorboard/          TensorBoard event files
<workdir>/eval/<split>_<step>/  sora-eval's predictions.jsonl and metrics.json
<workdir>/profile/              jax.profiler traces (config.profile_steps)
<workdir>/tfds/                 prepared TFDS datasets of a local workdir (unless config.data.data_dir is set)
```
Every path is an `etils.epath.Path`, so `--workdir=gs://bucket/runs/NAME` works the same as a local folder. Only
process 0 writes shared files, through `distributed.leader_then_all`.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from etils import epath

from sora_jax import config as config_lib
from sora_jax import distributed, paths
from sora_jax.data.tokenizer import Tokenizer, train_tokenizer
from sora_jax.errors import SoraError
from sora_jax.model import ModelConfig

BEST = "best"  # A step argument that means <workdir>/best.
FORMAT = 2  # Bumped when the layout or config.json changes in a way older or newer Sora cannot read.
FORMAT_KEY = "sora_workdir_format"
# Where a bucket workdir's built-in datasets are prepared: each host keeps its own small copy on local disk,
# since grain reads ArrayRecord files through the local filesystem (mount a bucket with gcsfuse for big data).
LOCAL_DATA_CACHE = "~/.cache/sora/tfds"


class Workdir:
    """Paths and persistent artifacts of one run directory (local or `gs://`)."""

    def __init__(self, path: paths.PathLike):
        self.path = paths.as_path(path)
        self.config_file = self.path / "config.json"
        self.tokenizer_file = self.path / "tokenizer.model"
        self.checkpoint_dir = self.path / "checkpoints"
        self.best_dir = self.path / BEST
        self.corrupt_dir = self.path / "corrupt_checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"
        self.tensorboard_dir = self.path / "tensorboard"
        self.profile_dir = self.path / "profile"

    def __str__(self) -> str:
        return os.fspath(self.path)

    @property
    def is_remote(self) -> bool:
        return paths.is_remote(self.path)

    def eval_dir(self, split: str, label: str) -> epath.Path:
        """Where sora-eval writes one evaluation (`label` is e.g. "step800" or "best")."""
        return self.path / "eval" / f"{split}_{label}"

    def data_dir(self, configured: str) -> epath.Path:
        """Where TFDS datasets are prepared: `config.data.data_dir`, else `<workdir>/tfds` for a local workdir,
        else a per-host local cache (see LOCAL_DATA_CACHE)."""
        if configured:
            return paths.as_path(configured)
        return paths.as_path(LOCAL_DATA_CACHE) if self.is_remote else self.path / "tfds"

    # --- training: create, then write the shared artifacts ----------------------------------------------------
    def create(self) -> None:
        """Check the path (a reachable bucket; no regular file in the way), create the folder, and with several
        processes check that all of them see the same directory (a pod needs a shared one, e.g. a bucket)."""
        paths.check_reachable(self.path, "--workdir")
        if self.path.exists() and not self.path.is_dir():
            raise SoraError(f"--workdir {self.path} exists and is not a directory; choose another path.")
        distributed.leader_then_all("workdir", lambda: self.path.mkdir(parents=True, exist_ok=True))
        self._check_shared()

    def _check_shared(self) -> None:
        # Process 0 writes a token; a process that cannot read it back has a different (per-host) directory.
        token = distributed.broadcast_text(uuid.uuid4().hex)
        if distributed.process_count() == 1:
            return
        token_file = self.path / ".sora_processes"
        distributed.leader_then_all("workdir token", lambda: paths.write_text(token_file, token))
        if not distributed.all_agree(paths.read_text_or_none(token_file) == token):
            raise SoraError(f"--workdir {self.path} is not the same directory on every process: a multi-host run "
                            "needs a run directory all hosts share, e.g. --workdir=gs://BUCKET/runs/NAME.")

    def model_config(self, config: ml_collections.ConfigDict, tokenizer_vocab: int) -> ModelConfig:
        """Resolve the preset and overrides; refuse a model whose shapes differ from this workdir's; save the
        resolved config (process 0)."""
        model_config = config_lib.resolve_model_config(config.model, tokenizer_vocab)
        resolved = config.copy_and_resolve_references()
        for name in config_lib.MODEL_FIELDS:
            resolved.model[name] = getattr(model_config, name)
        if self.config_file.exists():
            saved = self._read_saved_config().get("model", {})
            for name in config_lib.SHAPE_FIELDS:
                if name in saved and saved[name] != resolved.model[name]:
                    raise SoraError(
                        f"{self.config_file} has model.{name}={saved[name]!r} but this run asks for "
                        f"{resolved.model[name]!r}: the checkpoints here belong to a different model. Use the "
                        "original setting or a new --workdir.")
        text = config_lib.to_json(resolved, **{FORMAT_KEY: FORMAT})
        distributed.leader_then_all("config.json", lambda: paths.write_text(self.config_file, text))
        return model_config

    def tokenizer(self, cfg: ml_collections.ConfigDict, texts: Callable[[], list[str]], *, seed: int) -> Tokenizer:
        """The configured `.model`, else the one saved in the workdir, else one that process 0 trains on
        `texts()` and saves (atomically) before any process reads it."""
        if cfg.model_path:
            return load_tokenizer_file(cfg.model_path, "config.tokenizer.model_path", cfg.extra_ids)

        def train() -> None:
            if self.tokenizer_file.exists():
                return
            tokenizer = train_tokenizer(texts(), vocab_size=cfg.vocab_size, model_type=cfg.model_type,
                                        character_coverage=cfg.character_coverage,
                                        max_sentences=2 * cfg.max_training_sentences, seed=seed,
                                        extra_ids=cfg.extra_ids)
            paths.write_bytes(self.tokenizer_file, tokenizer.model_proto())

        distributed.leader_then_all("tokenizer", train)
        return load_tokenizer_file(self.tokenizer_file, "the workdir's tokenizer", cfg.extra_ids)

    # --- reading a trained run ----------------------------------------------------------------------------
    def require_run(self) -> dict[str, Any]:
        """The saved config.json as a dict; a SoraError unless this is the directory of a training run of this
        Sora version."""
        paths.check_reachable(self.path, "--workdir")
        if not self.path.is_dir():
            raise SoraError(f"workdir {self.path} does not exist; point --workdir at the directory of a training "
                            "run.")
        if not self.config_file.exists():
            raise SoraError(f"{self.path} has no config.json, so it is not the workdir of a training run; point "
                            "--workdir at the directory train.py was given.")
        return self._read_saved_config()

    def _read_saved_config(self) -> dict[str, Any]:
        try:
            saved = json.loads(self.config_file.read_text())
        except json.JSONDecodeError as e:
            raise SoraError(f"{self.config_file} is not valid JSON ({e}); restore it or use a new --workdir.") from e
        found = saved.pop(FORMAT_KEY, None) if isinstance(saved, dict) else None
        if found != FORMAT:
            written = "an older version" if found is None or found < FORMAT else "a newer version"
            raise SoraError(f"{self.path} was written by {written} of Sora (workdir format {found}; this version "
                            f"reads format {FORMAT}): use that version for it, or train again in a new --workdir.")
        return saved

    def load_config(self, overrides: Mapping[str, Any] | None = None) -> tuple[ml_collections.ConfigDict,
                                                                              list[str]]:
        """config.json on top of the schema (its types kept), then `overrides` ({"data.max_input_length": 64}
        or command-line text), validated."""
        config, notes = config_lib.from_saved(self.require_run(), str(self.config_file))
        config_lib.apply_overrides(config, dict(overrides or {}))
        config_lib.validate(config)
        return config, notes

    def load_tokenizer(self, config: ml_collections.ConfigDict) -> Tokenizer:
        """The tokenizer the run was trained with: config.tokenizer.model_path if set, else the workdir's."""
        extra_ids = config.tokenizer.extra_ids
        if config.tokenizer.model_path:
            return load_tokenizer_file(config.tokenizer.model_path, "config.tokenizer.model_path (the tokenizer "
                                       "this run was trained with)", extra_ids)
        if not self.tokenizer_file.exists():
            raise SoraError(f"{self.tokenizer_file} does not exist: training stopped before its tokenizer was "
                            "saved; train first, or pass --config.tokenizer.model_path=FILE.model.")
        return load_tokenizer_file(self.tokenizer_file, "the workdir's tokenizer", extra_ids)

    def events(self) -> list[dict[str, Any]]:
        """The events of metrics.jsonl; an unreadable last line (a run killed mid-write) is skipped."""
        text = paths.read_text_or_none(self.metrics_file)
        events = []
        lines = (text or "").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise SoraError(f"{self.metrics_file} line {number} is not valid JSON; fix or remove that "
                                    "line.") from None
        return events

    def last_metrics(self, split: str) -> dict[str, Any]:
        """The newest event of `split` in metrics.jsonl (empty if none)."""
        found: dict[str, Any] = {}
        for event in self.events():
            if event.get("split") == split:
                found = {k: v for k, v in event.items() if k not in ("step", "split")}
        return found


def load_tokenizer_file(path: paths.PathLike, what: str, extra_ids: int) -> Tokenizer:
    """A sentencepiece model file (local or in a bucket) with `extra_ids` sentinels; a missing file is a
    SoraError."""
    file = paths.as_path(path)
    if not file.exists():
        raise SoraError(f"{what} {file} does not exist; fix config.tokenizer.model_path or leave it empty to train "
                        "one.")
    return Tokenizer(file.read_bytes(), os.fspath(file), extra_ids=extra_ids)


def tokenizer_texts(train_pairs: Any, max_pairs: int, seed: int) -> list[str]:
    """Both sides of a seeded sample of the training pairs (the vocabulary is shared)."""
    indices = list(range(len(train_pairs)))
    if len(indices) > max_pairs:
        indices = sorted(random.Random(seed).sample(indices, max_pairs))
    texts = []
    for i in indices:
        example = train_pairs[i]
        texts += [example[key] for key in ("inputs", "targets", "text") if key in example]
    return texts
