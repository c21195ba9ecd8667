"""A run served with quantized weights: PTQ of restored float params, and quantized exports read back.

`load_workdir(path, quantize="int8")` restores the float params as usual and quantizes them here (weight-only
PTQ, `sora_jax.compression`); the decoders then run unchanged on the quantized model. A quantized export
(`sora-export --quantize=int8 --out=DIR`) is a folder that `load_workdir(DIR)` reads like a run directory:

```
<out>/config.json       the run's config (tokenizer.model_path cleared), with the workdir format number
<out>/tokenizer.model   the run's sentencepiece model
<out>/quantized.json    {"scheme", "step", "from_best", "source"}: what was exported, from where
<out>/params/           the quantized params, int qvalues and float scales as saved (orbax)
```
"""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath

from sora_jax import paths, sharding
from sora_jax.compression import SCHEMES, providers, quantized_model, restore_quantized_params
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder
from sora_jax.model.params import tree_bytes

MANIFEST_FILE = "quantized.json"
PARAMS_DIR = "params"


def check_scheme(scheme: Any) -> str:
    """`scheme` if it is a supported quantization scheme, else a one-line SoraError naming the supported ones."""
    if scheme not in SCHEMES:
        raise SoraError(f"--quantize={scheme} is not a supported quantization scheme; use one of "
                        f"{', '.join(SCHEMES)}.")
    return scheme


def serving_layout(model: EncoderDecoder, float_shardings: Any, mesh: jax.sharding.Mesh,
                   scheme: str) -> tuple[EncoderDecoder, Any]:
    """(the PTQ model of `scheme`, the shardings of its params). Nothing is allocated.

    An int kernel keeps its float kernel's sharding (same shape); the per-channel scales are small and
    replicated. The float leaves (embedding, position bias, norms) keep theirs.
    """
    qmodel = quantized_model(model, scheme)
    abstract = providers.abstract_params(qmodel)
    replicated = sharding.replicated(mesh)

    def place(float_sharding: Any, leaf: Any) -> Any:
        if not isinstance(leaf, providers.WithAux):
            return float_sharding
        kernel_shape = leaf.array.qvalue.shape
        return jax.tree.map(lambda x: float_sharding if x.shape == kernel_shape else replicated, leaf)

    return qmodel, jax.tree.map(place, float_shardings, abstract)


def quantize_params(model: EncoderDecoder, qmodel: EncoderDecoder, params: Any, shardings: Any) -> Any:
    """Float `params` of `model` quantized for `qmodel` (from `serving_layout`), placed on `shardings`."""
    return jax.device_put(providers.quantize_base(model, qmodel, params), shardings)


def bytes_note(scheme: str, float_params: Any, qparams: Any) -> str:
    """'int8 weights: params 0.08 MB (float32 0.23 MB, 3.0x smaller)'; `float_params` may be abstract."""
    dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(float_params)})
    before, after = tree_bytes(float_params), tree_bytes(qparams)
    return (f"{scheme} weights: params {after / 1e6:.2f} MB ({'/'.join(dtypes)} {before / 1e6:.2f} MB, "
            f"{before / max(after, 1):.1f}x smaller)")


def read_manifest(path: epath.Path) -> dict[str, Any] | None:
    """The quantized.json of the export at `path` (None when `path` is not a quantized export)."""
    text = paths.read_text_or_none(path / MANIFEST_FILE)
    if text is None:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise SoraError(f"{path / MANIFEST_FILE} is not valid JSON ({e}); export again with sora-export "
                        "--quantize.") from None
    if not isinstance(manifest, dict) or manifest.get("scheme") not in SCHEMES or not isinstance(
            manifest.get("step"), int):
        raise SoraError(f"{path / MANIFEST_FILE} does not name a scheme ({', '.join(SCHEMES)}) and a step; export "
                        "again with sora-export --quantize.")
    return manifest


def manifest_text(scheme: str, step: int, from_best: bool, source: str) -> str:
    """The quantized.json of a new export."""
    return json.dumps({"scheme": scheme, "step": step, "from_best": from_best, "source": source}, indent=2) + "\n"


def restore_export(path: epath.Path, qmodel: EncoderDecoder, shardings: Any, mesh: jax.sharding.Mesh) -> Any:
    """The quantized params of the export at `path`, exactly as saved, placed on `shardings`."""
    params = restore_quantized_params(path / PARAMS_DIR, qmodel, sharding.replicated(mesh))
    return jax.device_put(params, shardings)
