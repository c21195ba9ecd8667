"""The workdir: where a run keeps its config, tokenizer, prepared data, checkpoints and metrics.

```
<workdir>/config.json        the resolved config (model sizes filled in from the preset)
<workdir>/tokenizer.model    the sentencepiece model (trained once, reused on resume)
<workdir>/tfds/              prepared TFDS datasets (unless config.data.data_dir points elsewhere)
<workdir>/checkpoints/<step> orbax checkpoints: train state + data-iterator state
<workdir>/metrics.jsonl      one JSON object per train-log / eval event
<workdir>/tensorboard/       TensorBoard event files
```
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from sora_jax import config as config_lib
from sora_jax.data.tokenizer import Tokenizer, train_tokenizer
from sora_jax.errors import SoraError
from sora_jax.model import PRESETS, ModelConfig

VOCAB_MULTIPLE = 128  # Embedding rows are padded to a multiple of this, which shards and tiles well.


class Workdir:
    """Paths and persistent artifacts of one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path).absolute()
        if self.path.exists() and not self.path.is_dir():
            raise SoraError(f"--workdir {self.path} exists and is not a directory; choose another path.")
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.path / "checkpoints"
        self.config_file = self.path / "config.json"

    def data_dir(self, configured: str) -> Path:
        """Where TFDS datasets are prepared: `config.data.data_dir`, or `<workdir>/tfds`."""
        return Path(configured).expanduser().absolute() if configured else self.path / "tfds"

    def tokenizer(self, cfg: ml_collections.ConfigDict, train_pairs: Any, *, seed: int) -> Tokenizer:
        """The configured `.model`, else the one cached in the workdir, else one trained on `train_pairs`."""
        if cfg.model_path:
            return Tokenizer.load(cfg.model_path)
        cached = self.path / "tokenizer.model"
        if not cached.exists() and jax.process_index() == 0:
            texts = _tokenizer_texts(train_pairs, cfg.max_training_sentences, seed)
            tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, model_type=cfg.model_type,
                                        character_coverage=cfg.character_coverage,
                                        max_sentences=2 * cfg.max_training_sentences, seed=seed)
            tmp = cached.with_suffix(".tmp")
            tokenizer.save(tmp)
            tmp.rename(cached)  # Atomic: a killed run never leaves half a tokenizer behind.
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("sora_tokenizer_ready")
        return Tokenizer.load(cached)

    def model_config(self, config: ml_collections.ConfigDict, tokenizer_vocab: int) -> ModelConfig:
        """Resolve the preset and overrides; refuse a model whose shapes differ from this workdir's; save config."""
        model_config = resolve_model_config(config.model, tokenizer_vocab)
        resolved = config.copy_and_resolve_references()
        for name in config_lib.MODEL_FIELDS:
            resolved.model[name] = getattr(model_config, name)
        if self.config_file.exists():
            saved = config_lib.load_saved_config(self.config_file).get("model", {})
            for name in config_lib.SHAPE_FIELDS:
                if name in saved and saved[name] != resolved.model[name]:
                    raise SoraError(
                        f"{self.config_file} has model.{name}={saved[name]!r} but this run asks for "
                        f"{resolved.model[name]!r}: the checkpoints here belong to a different model. Use the "
                        "original setting or a new --workdir.")
        if jax.process_index() == 0:
            config_lib.save_config(resolved, self.config_file)
        return model_config

    def last_metrics(self, split: str) -> dict[str, float]:
        """The newest event of `split` in metrics.jsonl (empty if none)."""
        path = self.path / "metrics.jsonl"
        found: dict[str, float] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                event = json.loads(line)
                if event.get("split") == split:
                    found = {k: v for k, v in event.items() if k not in ("step", "split")}
        return found


def resolve_model_config(model_cfg: ml_collections.ConfigDict, tokenizer_vocab: int) -> ModelConfig:
    """Preset values, overridden by every non-None `config.model` field; vocab from the tokenizer if unset."""
    if model_cfg.preset not in PRESETS:
        raise SoraError(f"config.model.preset={model_cfg.preset!r} is unknown; choose one of "
                        f"{', '.join(PRESETS)}.")
    fields = dict(PRESETS[model_cfg.preset])
    for name in config_lib.MODEL_FIELDS:
        if model_cfg[name] is not None:
            fields[name] = model_cfg[name]
    if model_cfg.vocab_size is None:
        fields["vocab_size"] = -(-tokenizer_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    elif model_cfg.vocab_size < tokenizer_vocab:
        raise SoraError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer_vocab} pieces; raise it or leave it unset.")
    for name in ("dtype", "param_dtype", "scan_layers", "remat_policy"):
        fields[name] = model_cfg[name]
    return ModelConfig(**fields)


def _tokenizer_texts(train_pairs: Any, max_pairs: int, seed: int) -> list[str]:
    # A seeded sample of the training pairs when the split is large; both sides, since the vocabulary is shared.
    indices = list(range(len(train_pairs)))
    if len(indices) > max_pairs:
        indices = sorted(random.Random(seed).sample(indices, max_pairs))
    texts = []
    for i in indices:
        pair = train_pairs[i]
        texts += [pair["inputs"], pair["targets"]]
    return texts
