"""Import and export Hugging Face T5-family checkpoints (T5 v1.0, T5 v1.1, Flan-T5, mT5) and T5Gemma without PyTorch.

A checkpoint directory is what transformers' `save_pretrained(..., safe_serialization=True)` writes:
`config.json`, `model.safetensors` (or `model.safetensors.index.json` plus shards) and, from a tokenizer's
save, `spiece.model` (T5) or `tokenizer.model` (Gemma). config.json's model_type picks the architecture
(sora_jax/interop/formats.py). Import checks everything (config fields, tensor names, shapes, the tokenizer's size)
before the first array is placed on a device, then streams the weights one shard at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze
from flax.linen import unbox
from jax.experimental import multihost_utils
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from sora_jax import paths
from sora_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from sora_jax.errors import SoraError
from sora_jax.interop import formats
from sora_jax.interop.hf_t5_layout import TensorSpec, to_hf, to_sora
from sora_jax.model.config import DTYPES, ModelConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_OTHER_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")

LeafPath = tuple[str, ...]


class _Stored(NamedTuple):
    file: Path
    shape: tuple[int, ...]
    dtype: str


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SoraError(f"{file} is not readable JSON ({e}); re-download or re-save the checkpoint.") from e


def _more(items: list[Any]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def checkpoint_tokenizer(root: Path, cfg: ModelConfig) -> tuple[Path, int]:
    """(the sentencepiece model file of a checkpoint directory, its sentinel count) for a model of `cfg`; a missing
    file is a SoraError."""
    fmt = formats.for_model(cfg)
    file = root / fmt.tokenizer_file
    if not file.is_file():
        raise SoraError(f"{root} has no {fmt.tokenizer_file} (the checkpoint's sentencepiece model); copy it there "
                        "from the model's download, or set config.tokenizer.model_path to it.")
    return file, fmt.extra_ids(Tokenizer.load(file, extra_ids=0).num_pieces, cfg.vocab_size)


def _load_tokenizer(root: Path, cfg: ModelConfig, fmt: formats.Format) -> Tokenizer | None:
    file = root / fmt.tokenizer_file
    if not file.is_file():
        return None
    pieces = Tokenizer.load(file, extra_ids=0).num_pieces  # SoraError if unreadable or pad/eos are not 0/1
    tokenizer = Tokenizer.load(file, extra_ids=fmt.extra_ids(pieces, cfg.vocab_size))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise SoraError(f"{file} has {tokenizer.vocab_size} pieces but the model's embedding ({fmt.embed}, "
                        f"vocab_size in {CONFIG_FILE}) has only {cfg.vocab_size} rows; use the {fmt.tokenizer_file} "
                        "that was saved with these weights.")
    if (cfg.pad_id, cfg.eos_id) != (PAD_ID, EOS_ID):
        raise SoraError(f"{root / CONFIG_FILE}: pad_token_id/eos_token_id are {cfg.pad_id}/{cfg.eos_id} but "
                        f"{file} (like every Sora tokenizer) uses {PAD_ID}/{EOS_ID}; fix config.json.")
    return tokenizer


def _stored_tensors(root: Path) -> dict[str, _Stored]:
    """Name -> (file, shape, dtype) of every stored tensor, read from the safetensors headers only."""
    single, index = root / WEIGHTS_FILE, root / INDEX_FILE
    weight_map: dict[str, str] | None = None
    if single.is_file():
        files = [single]
    elif index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SoraError(f"{index}: weight_map is missing or not an object of tensor name -> shard file; "
                            "re-download the index that came with the shards.")
        files = [root / name for name in dict.fromkeys(weight_map.values())]
        for file in files:
            if not file.is_file():
                raise SoraError(f"{index}: weight_map names shard {file.name}, which is not in {root}; download "
                                "every shard listed in the index.")
    else:
        others = [name for name in _OTHER_WEIGHT_FILES if (root / name).is_file()]
        if others:
            raise SoraError(f"{root} has {others[0]} but no {WEIGHTS_FILE}; Sora reads safetensors only: re-save "
                            "with transformers' save_pretrained(directory, safe_serialization=True).")
        raise SoraError(f"{root} has neither {WEIGHTS_FILE} nor {INDEX_FILE}; point to a directory written by "
                        "transformers' save_pretrained.")
    stored: dict[str, _Stored] = {}
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                entries = [(name, f.get_slice(name)) for name in f.keys()]
                for name, view in entries:
                    if name in stored:
                        raise SoraError(f"{file}: tensor {name} is also stored in {stored[name].file.name}; "
                                        "re-download the checkpoint.")
                    stored[name] = _Stored(file, tuple(view.get_shape()), view.get_dtype())
        except (SafetensorError, OSError) as e:
            raise SoraError(f"{file} is not a readable safetensors file ({e}); re-download it.") from e
    for name, shard in (weight_map or {}).items():
        if name not in stored or stored[name].file.name != shard:
            raise SoraError(f"{root / shard}: tensor {name}, which {INDEX_FILE} places there, is not in it; "
                            "re-download the shards and their index together.")
    return stored


def _check_tensors(cfg: ModelConfig, stored: dict[str, _Stored], root: Path, fmt: formats.Format) -> dict[str, str]:
    """Checks names, shapes and dtypes against the config; returns HF name -> stored name to read it from."""
    stored = {n: s for n, s in stored.items() if not n.startswith(fmt.skipped_prefixes)}
    stored_as = {fmt.canonical_name(n): n for n in stored}  # the format's name -> the name it is stored under
    stored = {name: stored[original] for name, original in stored_as.items()}
    specs = fmt.tensor_specs(cfg)
    expected = {s.hf_name: s.hf_shape for s in specs}
    allowed = {**fmt.optional_tensors(cfg), **expected}
    shared = fmt.embed
    config_file = root / CONFIG_FILE
    wrong_shape = [n for n in allowed if n in stored and stored[n].shape != allowed[n]]  # model order
    if wrong_shape:
        name = wrong_shape[0]
        raise SoraError(f"{stored[name].file}: tensor {name} has shape {list(stored[name].shape)} but "
                        f"{config_file} implies {list(allowed[name])}{_more(wrong_shape)}; use the config.json "
                        "that was saved with these weights.")
    unexpected = sorted(n for n in stored if n not in allowed)
    if unexpected:
        name = unexpected[0]
        raise SoraError(f"{stored[name].file}: unexpected tensor {name}{_more(unexpected)} for the model "
                        f"{config_file} describes; check that its layer counts, feed_forward_proj and "
                        "tie_word_embeddings belong to these weights.")
    not_float = [n for n in stored if stored[n].dtype not in _FLOAT_DTYPES]
    if not_float:
        name = not_float[0]
        raise SoraError(f"{stored[name].file}: tensor {name} has dtype {stored[name].dtype}; Sora imports "
                        "float16/bfloat16/float32 weights only (dequantise the checkpoint first).")
    sources = {name: name for name in expected}
    if shared not in stored:  # some conversions keep only a tied copy of the embedding
        sources[shared] = next((n for n in fmt.embed_copies if n in stored), shared)
    missing = [name for name in expected if sources[name] not in stored]
    if missing:
        where = root / (WEIGHTS_FILE if (root / WEIGHTS_FILE).is_file() else INDEX_FILE)
        raise SoraError(f"{where}: tensor {missing[0]}{_more(missing)} is missing, but {config_file} describes a "
                        "model that needs it; check that config.json belongs to these weights.")
    for copy, original in fmt.copies(cfg).items():
        if copy not in stored:
            continue
        with safe_open(stored[copy].file, framework="numpy") as f:
            stored_copy = f.get_tensor(stored_as[copy])
        with safe_open(stored[sources[original]].file, framework="numpy") as f:
            same = np.array_equal(stored_copy, f.get_tensor(stored_as[sources[original]]))
        if not same:
            raise SoraError(f"{stored[copy].file}: tensor {copy} differs from {original} but {config_file} "
                            "has tie_word_embeddings true (the default); set \"tie_word_embeddings\": false "
                            "there if the head is a separate matrix.")
    return {name: stored_as[source] for name, source in sources.items()}


def _full_shapes(cfg: ModelConfig, specs: list[TensorSpec], scan_layers: bool) -> dict[LeafPath, tuple[int, ...]]:
    """Sora leaf path -> leaf shape (stacked over layers when scanned)."""
    layers = {"encoder": cfg.num_encoder_layers, "decoder": cfg.num_decoder_layers}
    shapes = {}
    for spec in specs:
        shape = spec.sora_shape(cfg)
        if spec.layer is not None and scan_layers:
            shape = (layers[spec.stack], *shape)
        shapes[spec.sora_path(scan_layers)] = shape
    return shapes


def _leaf_shardings(shardings: Any, shapes: dict[LeafPath, tuple[int, ...]]) -> dict[LeafPath, Any]:
    """Validates `shardings` (None, one Sharding, or a tree shaped like the params) against every leaf."""
    if shardings is None:
        return dict.fromkeys(shapes)
    if isinstance(shardings, jax.sharding.Sharding):
        flat = dict.fromkeys(shapes, shardings)
    else:
        leaves = jax.tree_util.tree_leaves_with_path(
            shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
        flat = {tuple(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}
        missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
        if missing or extra:
            path, problem = (missing[0], "has no entry") if missing else (extra[0], "has an entry not in the model")
            raise SoraError(f"load_hf_t5(shardings=...) {problem} for params/{'/'.join(path)}; pass a tree shaped "
                            "like the params for this config and scan_layers (or one Sharding for all).")
    for path, sharding in flat.items():
        if not isinstance(sharding, jax.sharding.Sharding):
            raise SoraError(f"load_hf_t5(shardings=...) has {type(sharding).__name__} at params/{'/'.join(path)}; "
                            "every leaf must be a jax.sharding.Sharding.")
        try:
            sharding.shard_shape(shapes[path])
        except ValueError as e:
            raise SoraError(f"load_hf_t5(shardings=...): params/{'/'.join(path)} of shape {shapes[path]} does not "
                            f"divide over the devices of {getattr(sharding, 'spec', sharding)}; change the mesh or "
                            "the sharding rules.") from e
    return flat


def _read_params(cfg: ModelConfig, specs: list[TensorSpec], stored: dict[str, _Stored], sources: dict[str, str],
                 placement: dict[LeafPath, Any]) -> dict[str, Any]:
    """Streams the tensors shard by shard; each leaf goes to its device(s) as soon as it is complete."""
    host_dtype = jnp.dtype(cfg.param_dtype)
    layers = {"encoder": cfg.num_encoder_layers, "decoder": cfg.num_decoder_layers}
    by_file: dict[Path, list[TensorSpec]] = {}
    for spec in specs:
        by_file.setdefault(stored[sources[spec.hf_name]].file, []).append(spec)
    flat: dict[LeafPath, jax.Array] = {}
    pending: dict[LeafPath, tuple[np.ndarray, set[int]]] = {}  # scanned leaves still being filled

    def place(path: LeafPath, array: np.ndarray) -> None:
        sharding = placement[path]
        flat[path] = jax.device_put(array, sharding) if sharding is not None else jax.device_put(array)

    for file, file_specs in by_file.items():
        with safe_open(file, framework="numpy") as f:
            for spec in file_specs:
                array = np.ascontiguousarray(to_sora(spec, f.get_tensor(sources[spec.hf_name]), cfg), host_dtype)
                path = spec.sora_path(cfg.scan_layers)
                if spec.layer is None or not cfg.scan_layers:
                    place(path, array)
                    continue
                assert spec.stack is not None
                buffer, todo = pending.setdefault(
                    path, (np.empty((layers[spec.stack], *array.shape), host_dtype), set(range(layers[spec.stack]))))
                buffer[spec.layer] = array
                todo.discard(spec.layer)
                if not todo:
                    place(path, buffer)
                    del pending[path]
    assert not pending, sorted(pending)
    return traverse_util.unflatten_dict(flat)


def load_hf_t5(
    directory: str | Path, *, dtype: str = "float32", param_dtype: str = "float32", scan_layers: bool = False,
    shardings: Any = None,
) -> tuple[ModelConfig, dict[str, Any], Tokenizer | None]:
    """Imports a Hugging Face T5 / T5 v1.1 / Flan-T5 / mT5 / T5Gemma checkpoint directory.

    Returns (config, params, tokenizer): a ModelConfig with the given dtype, param_dtype and scan_layers; the
    params tree of `EncoderDecoder(config)` (stacked under `layers` when scan_layers) as jax Arrays in
    param_dtype, each placed with `jax.device_put(array, sharding)` when `shardings` (one Sharding, or a tree
    shaped like the params, e.g. from sora_jax.sharding.logical_shardings) is given; and the Tokenizer of
    `spiece.model` (T5) or `tokenizer.model` (T5Gemma), or None when the directory has none. Everything is
    checked before anything is placed; problems raise SoraError naming the file and the field or tensor.
    """
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value not in DTYPES:
            raise SoraError(f"load_hf_t5({name}={value!r}) is not supported; use one of {', '.join(DTYPES)}.")
    if not isinstance(scan_layers, bool):
        raise SoraError(f"load_hf_t5(scan_layers={scan_layers!r}) must be True or False.")
    root = Path(directory)
    config_file = root / CONFIG_FILE
    if not config_file.is_file():
        raise SoraError(f"{config_file} does not exist; point to a Hugging Face T5 checkpoint directory (what "
                        "save_pretrained writes: config.json and model.safetensors).")
    raw = _read_json(config_file)
    fmt = formats.for_config_json(raw, config_file)
    cfg = fmt.config_from_hf(raw, config_file, dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers)
    tokenizer = _load_tokenizer(root, cfg, fmt)
    stored = _stored_tensors(root)
    sources = _check_tensors(cfg, stored, root, fmt)
    specs = fmt.tensor_specs(cfg)
    placement = _leaf_shardings(shardings, _full_shapes(cfg, specs, cfg.scan_layers))
    params = _read_params(cfg, specs, stored, sources, placement)
    log.info("Imported %s: %d tensors, vocab %d, d_model %d, %d+%d layers.", root, len(specs), cfg.vocab_size,
             cfg.d_model, cfg.num_encoder_layers, cfg.num_decoder_layers)
    return cfg, params, tokenizer


def _to_host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_hf_t5(
    directory: str | Path, model_config: ModelConfig, params: Any, tokenizer: Tokenizer | None = None
) -> None:
    """Exports Sora params as a checkpoint `T5ForConditionalGeneration.from_pretrained` (T5GemmaForConditional-
    Generation for family "t5gemma") loads without warnings.

    Writes config.json, generation_config.json, model.safetensors (HF names, the params' own float dtype) and,
    with a tokenizer, spiece.model (T5) or tokenizer.model (T5Gemma). `params` may be scanned or not, boxed or
    plain, or wrapped as {"params": ...}. With several processes every process must call this (arrays are
    gathered); process 0 writes.
    """
    if not isinstance(model_config, ModelConfig):
        raise SoraError(f"save_hf_t5 needs a ModelConfig, got {type(model_config).__name__}.")
    cfg = model_config
    tree = unfreeze(unbox(params))
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    if not isinstance(tree, Mapping):
        raise SoraError(f"save_hf_t5 needs the params dict of EncoderDecoder, got {type(tree).__name__}.")
    flat = traverse_util.flatten_dict(tree)
    scanned = any(len(path) > 1 and path[1] == "layers" for path in flat)
    fmt = formats.for_model(cfg)
    specs = fmt.tensor_specs(cfg)
    shapes = _full_shapes(cfg, specs, scanned)
    missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
    wrong = [p for p in shapes if p in flat and tuple(np.shape(flat[p])) != shapes[p]]
    if missing or extra or wrong:
        path = (missing or extra or wrong)[0]
        problem = ("has no" if missing else "has an unexpected" if extra
                   else f"has shape {tuple(np.shape(flat[path]))}, not {shapes[path]}, for")
        raise SoraError(f"save_hf_t5: params {problem} leaf {'/'.join(path)} for this model_config; pass the "
                        "ModelConfig the params were built with.")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise SoraError(f"save_hf_t5: tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but the model "
                        f"has only {cfg.vocab_size} embedding rows; pass the tokenizer the model was trained with.")
    host: dict[LeafPath, np.ndarray] = {}
    tensors = {}
    for spec in specs:
        path = spec.sora_path(scanned)
        if path not in host:
            host[path] = _to_host(flat[path])
        array = host[path][spec.layer] if scanned and spec.layer is not None else host[path]
        tensors[spec.hf_name] = to_hf(spec, array, cfg)
    if fmt.export_extras is not None:
        tensors.update(fmt.export_extras(cfg))
    if jax.process_index() != 0:
        return
    out = paths.as_path(directory)  # A local folder or a bucket URL.
    paths.write_text(out / CONFIG_FILE, json.dumps(fmt.config_to_hf(cfg), indent=2, sort_keys=True) + "\n")
    paths.write_text(out / GENERATION_CONFIG_FILE, json.dumps(fmt.generation_config_to_hf(cfg), indent=2) + "\n")
    # transformers requires the "format" metadata.
    paths.write_bytes(out / WEIGHTS_FILE, safetensors_bytes(tensors, metadata={"format": "pt"}))
    if tokenizer is not None:
        paths.write_bytes(out / fmt.tokenizer_file, tokenizer.model_proto())
    log.info("Exported %d tensors to %s.", len(tensors), out)
