"""Post-training weight quantization (qwix PTQ) for inference, and saving/restoring quantized params (orbax).

Quantized: every matmul weight, i.e. attention q/k/v/o, the MLP (wi / wi_0, wi_1 / wo) and the untied LM head,
per output channel (symmetric absmax, float32 scales). Activations stay in the compute dtype.

Not quantized: the token embedding, the relative position bias tables and the norm scales. The embedding is
read by a gather (`jnp.take`), which costs no FLOPs and which qwix does not intercept (it quantizes
dot_general / einsum / conv weights only); with tie_word_embeddings the same table is the LM head, and
quantizing it for the head's einsum would leave the gather a quantized array it cannot read, so a tied head
stays float too. The bias tables and scales are a few thousand numbers.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from sora_jax import paths
from sora_jax.compression import providers
from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder


def quantized_model(model: EncoderDecoder, scheme: str) -> EncoderDecoder:
    """The PTQ inference model for `scheme` ("int8" or "int4"): it reads params made by `quantize_model`."""
    provider = providers.PtqProvider([providers.weight_rule(scheme)])
    return providers.intercept(model, provider)


def quantize_model(model: EncoderDecoder, params: Any, scheme: str) -> tuple[EncoderDecoder, Any]:
    """Weight-only PTQ: (qmodel, qparams) with every matmul weight stored as `scheme` ("int8" or "int4").

    qparams holds qwix quantized weights (int qvalue + float32 per-channel scale) where `params` had float
    kernels, and the float embedding, position bias and norm leaves unchanged. Use the pair wherever a model and
    its params go: `search.decode(qparams, tokens, options, model=qmodel)`, `qmodel.apply(...)`.
    """
    qmodel = quantized_model(model, scheme)
    return qmodel, providers.quantize_base(model, qmodel, params)


def save_quantized_params(directory: paths.PathLike, qparams: Any, *, use_ocdbt: bool = True) -> None:
    """Writes quantized params (int qvalues and float scales as they are) to a new orbax checkpoint directory,
    local or in a bucket; `use_ocdbt` as in config.checkpoint_ocdbt (restoring reads either format)."""
    directory = paths.as_path(directory)
    if directory.exists():
        raise SoraError(f"{directory} already exists; save quantized params to a new directory.")
    with ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=use_ocdbt)) as writer:
        writer.save(directory, qparams)


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def restore_quantized_params(directory: paths.PathLike, qmodel: EncoderDecoder,
                             sharding: jax.sharding.Sharding | None = None) -> Any:
    """Reads params saved by `save_quantized_params` for `qmodel` (from `quantized_model(model, scheme)`).

    Every leaf is placed with `sharding` (default: the first device). A checkpoint of another scheme or model
    size is a SoraError rather than a silent cast.
    """
    directory = paths.as_path(directory)
    if not (directory / "_METADATA").is_file():
        raise SoraError(f"{directory} holds no saved params; pass a directory written by save_quantized_params.")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            providers.abstract_params(qmodel))
    with ocp.StandardCheckpointer() as reader:
        saved = reader.metadata(directory).item_metadata
        saved_leaves = {_path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
        for path, want in jax.tree_util.tree_flatten_with_path(abstract)[0]:
            got = saved_leaves.get(_path_name(path))
            if got is None or tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
                found = "nothing" if got is None else f"{got.dtype}{list(got.shape)}"
                raise SoraError(f"{directory}: params/{_path_name(path)} is {found}, this model wants "
                                f"{want.dtype}{list(want.shape)}; restore with the scheme and model config the "
                                "params were saved with.")
        return reader.restore(directory, abstract)
