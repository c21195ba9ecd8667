"""Starting a run from pretrained params: `config.init_from`.

- `hf:/path/to/dir`: a Hugging Face T5 or T5Gemma checkpoint (config.json, model.safetensors, spiece.model or
  tokenizer.model).
- `workdir:DIR[@STEP|@best]`: another Sora run (a pretraining run, say), its newest checkpoint by default.

The architecture and tokenizer come from the source; optimizer, data and schedule are the run's own. Settings
that contradict the source (another vocabulary or shape) are refused with one line before anything is compiled.
A resumed run ignores `init_from`: its own checkpoints win.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from sora_jax import config as config_lib
from sora_jax.compression import lora, providers
from sora_jax.errors import SoraError
from sora_jax.interop import load_hf_t5
from sora_jax.interop.formats import config_from_hf
from sora_jax.interop.hf_t5 import checkpoint_tokenizer
from sora_jax.model import EncoderDecoder, ModelConfig
from sora_jax.model import params as params_lib
from sora_jax.training.state import TrainingSetup
from sora_jax.workdir import BEST, Workdir, load_workdir

HF, WORKDIR = "hf:", "workdir:"


def checkpoint_dir(init_from: str, what: str = "config.init_from") -> Path:
    """The directory named by an `hf:` spec; a missing directory is an error (`what` names the config key)."""
    directory = Path(init_from[len(HF):]).expanduser()
    if not (directory / "config.json").is_file():
        raise SoraError(f"{what}: {directory} has no config.json; download the checkpoint there first "
                        "(e.g. huggingface-cli download google/flan-t5-small --local-dir DIR).")
    return directory


def parse_workdir_spec(init_from: str, what: str = "config.init_from") -> tuple[str, int | str | None]:
    """`workdir:DIR[@STEP|@best]` -> (DIR, step: None = newest, an int, or "best")."""
    body = init_from[len(WORKDIR):]
    path, at, step = body.rpartition("@")
    if not at:
        return body, None
    if step == BEST:
        return path, BEST
    if not step.isdigit():
        raise SoraError(f"{what}={init_from!r}: after '@' comes a checkpoint step or 'best'.")
    return path, int(step)


def _check_same(config: ml_collections.ConfigDict, name: str, source_value: Any, source: str) -> None:
    if config.model[name] is not None and config.model[name] != source_value:
        raise SoraError(f"config.model.{name}={config.model[name]!r} but {source} has {source_value!r}: a fine-tune "
                        f"keeps the pretrained architecture; leave config.model.{name} unset.")


def apply_pretrained_architecture(config: ml_collections.ConfigDict) -> None:
    """Fill `config.model` and the tokenizer settings from the source, in place (refusing contradictions)."""
    spec = config.init_from
    if spec.startswith(WORKDIR):
        path, _ = parse_workdir_spec(spec)
        source = Workdir(path)
        saved, _ = source.load_config()
        for name in config_lib.MODEL_FIELDS:
            _check_same(config, name, saved.model[name], f"init_from run {source}")
            config.model[name] = saved.model[name]
        config.model.preset = saved.model.preset
        tokenizer_file = saved.tokenizer.model_path or str(source.tokenizer_file)
        if config.tokenizer.model_path and config.tokenizer.model_path != tokenizer_file:
            raise SoraError(f"config.tokenizer.model_path={config.tokenizer.model_path} but the init_from run "
                            f"{source} was trained with {tokenizer_file}: a fine-tune keeps its vocabulary; leave "
                            "config.tokenizer.model_path unset.")
        config.tokenizer.model_path = tokenizer_file
        config.tokenizer.extra_ids = saved.tokenizer.extra_ids
        return
    if not spec.startswith(HF):
        raise SoraError(f"config.init_from={spec!r}: use hf:/path/to/dir (a Hugging Face T5 checkpoint) or "
                        "workdir:DIR[@STEP|@best] (a Sora run).")
    directory = checkpoint_dir(spec)
    config_file = directory / "config.json"
    pretrained = config_from_hf(json.loads(config_file.read_text()), config_file, dtype=config.model.dtype,
                                param_dtype=config.model.param_dtype, scan_layers=config.model.scan_layers)
    for name in config_lib.MODEL_FIELDS:
        if config.model[name] is None:
            config.model[name] = getattr(pretrained, name)
    if not config.tokenizer.model_path:
        file, extra_ids = checkpoint_tokenizer(directory, pretrained)
        config.tokenizer.model_path = str(file)
        config.tokenizer.extra_ids = extra_ids


@dataclasses.dataclass(frozen=True)
class Source:
    """A pretrained source's architecture and tokenizer (its params not restored)."""

    model_config: ModelConfig
    tokenizer_path: str
    extra_ids: int


def describe_source(spec: str, model_cfg: ml_collections.ConfigDict, what: str = "config.init_from") -> Source:
    """The architecture and tokenizer of `spec` (`hf:` or `workdir:`), its checkpoint's shapes checked (metadata
    only); an `hf:` source takes dtype, param_dtype and scan_layers from `model_cfg`. SoraError when missing."""
    if spec.startswith(WORKDIR):
        path, step = parse_workdir_spec(spec, what)
        source = load_workdir(path, step=step, restore=False)  # Checks the step's shapes against its config.
        saved = source.config.tokenizer
        return Source(source.model_config, saved.model_path or str(source.workdir.tokenizer_file), saved.extra_ids)
    if not spec.startswith(HF):
        raise SoraError(f"{what}={spec!r}: use hf:/path/to/dir (a Hugging Face T5 checkpoint) or "
                        "workdir:DIR[@STEP|@best] (a Sora run).")
    directory = checkpoint_dir(spec, what)
    config_file = directory / "config.json"
    model_config = config_from_hf(json.loads(config_file.read_text()), config_file, dtype=model_cfg.dtype,
                                  param_dtype=model_cfg.param_dtype, scan_layers=model_cfg.scan_layers)
    file, extra_ids = checkpoint_tokenizer(directory, model_config)
    return Source(model_config, str(file), extra_ids)


def check_source(init_from: str) -> None:
    """For `workdir:` sources: a SoraError now (before any compile) when the step or checkpoint is missing."""
    if init_from.startswith(WORKDIR):
        path, step = parse_workdir_spec(init_from)
        run = load_workdir(path, step=step, restore=False)
        run.check_shapes(run.steps[-1] if step is None else step)


def load_pretrained_params(init_from: str, model_config: ModelConfig, param_shardings: Any) -> Any:
    """The source's params, each placed directly on its shard of the run's mesh."""
    if init_from.startswith(WORKDIR):
        path, step = parse_workdir_spec(init_from)
        return jax.device_put(load_workdir(path, step=step).params, param_shardings)
    _, params, _ = load_hf_t5(checkpoint_dir(init_from), dtype=model_config.dtype,
                              param_dtype=model_config.param_dtype, scan_layers=model_config.scan_layers,
                              shardings=param_shardings)
    return params


def train_params(config: ml_collections.ConfigDict, model_config: ModelConfig, setup: TrainingSetup,
                 fresh_params: Any, mesh: jax.sharding.Mesh, rules: Any) -> Any:
    """The params of config.init_from on the train state's shardings; under LoRA with the fresh adapters (an
    exact no-op: B is zero) added, and under QLoRA with the base quantized first."""
    if not config.lora.rank:
        return load_pretrained_params(config.init_from, model_config, setup.state_shardings.params)
    adapters, _ = lora.split_trainable(fresh_params)
    _, base_shardings = lora.split_trainable(setup.state_shardings.params)
    if not config.lora.base_quantization:
        return lora.join_params(adapters, load_pretrained_params(config.init_from, model_config, base_shardings))
    float_model = EncoderDecoder(model_config)
    _, float_shardings = params_lib.abstract_params(params_lib.init_fn(float_model), mesh, rules)
    base = load_pretrained_params(config.init_from, model_config, float_shardings)
    quantized_base = jax.device_put(providers.quantize_base(float_model, setup.model, base), base_shardings)
    return lora.join_params(adapters, quantized_base)
