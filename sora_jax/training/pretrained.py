"""Starting a run from a pretrained checkpoint: `config.init_from = "hf:/path/to/dir"` (Hugging Face T5 layout).

The architecture and tokenizer come from the checkpoint; optimizer, data and schedule are the run's own. A
resumed run ignores `init_from`: its own checkpoints win.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from sora_jax import config as config_lib
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5
from sora_jax.interop.hf_t5 import hf_extra_ids
from sora_jax.interop.hf_t5_config import config_from_hf
from sora_jax.model import ModelConfig

PREFIX = "hf:"


def checkpoint_dir(init_from: str) -> Path:
    """The directory named by `init_from`; a spec without the `hf:` prefix or a missing directory is an error."""
    if not init_from.startswith(PREFIX):
        raise SoraError(f"config.init_from={init_from!r}: use hf:/path/to/dir (a Hugging Face T5 checkpoint "
                        "directory with config.json, model.safetensors and spiece.model).")
    directory = Path(init_from[len(PREFIX):]).expanduser()
    if not (directory / "config.json").is_file():
        raise SoraError(f"config.init_from: {directory} has no config.json; download the checkpoint there first "
                        "(e.g. huggingface-cli download google/flan-t5-small --local-dir DIR).")
    return directory


def apply_pretrained_architecture(config: ml_collections.ConfigDict) -> None:
    """Fill `config.model` (fields left unset) and `config.tokenizer.model_path` from the checkpoint, in place."""
    directory = checkpoint_dir(config.init_from)
    config_file = directory / "config.json"
    pretrained = config_from_hf(json.loads(config_file.read_text()), config_file, dtype=config.model.dtype,
                                param_dtype=config.model.param_dtype, scan_layers=config.model.scan_layers)
    for name in config_lib.MODEL_FIELDS:
        if config.model[name] is None:
            config.model[name] = getattr(pretrained, name)
    if not config.tokenizer.model_path:
        spiece = directory / "spiece.model"
        if not spiece.is_file():
            raise SoraError(f"{directory} has no spiece.model; set config.tokenizer.model_path to the checkpoint's "
                            "sentencepiece model.")
        config.tokenizer.model_path = str(spiece)
        pieces = Tokenizer.load(spiece, extra_ids=0).num_pieces
        config.tokenizer.extra_ids = hf_extra_ids(pieces, config.model.vocab_size)


def load_pretrained_params(init_from: str, model_config: ModelConfig, param_shardings: Any) -> Any:
    """The checkpoint's params, each placed directly on its shard of the run's mesh."""
    _, params, _ = load_hf_t5(checkpoint_dir(init_from), dtype=model_config.dtype,
                              param_dtype=model_config.param_dtype, scan_layers=model_config.scan_layers,
                              shardings=param_shardings)
    return params
