"""The model's parameters without allocating them: an init function, and abstract shapes with shardings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from sora_jax import sharding
from sora_jax.model.transformer import EncoderDecoder


def init_fn(model: EncoderDecoder) -> Callable[[jax.Array], Any]:
    """`rng -> params` (with logical-axis boxes): what `jax.eval_shape` and a sharded jit both call."""
    dummy_tokens = np.zeros((1, 8), np.int32)

    def init(rng: jax.Array) -> Any:
        return model.init(rng, dummy_tokens, dummy_tokens)["params"]

    return init


def abstract_params(init: Callable[[jax.Array], Any], mesh: Mesh, rules: Any) -> tuple[Any, Any]:
    """(ShapeDtypeStructs of the unboxed params carrying their shardings, the tree of NamedShardings); nothing
    is allocated. A dimension the mesh cannot divide is a SoraError."""
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    sharding.check_divisible(boxed, shardings)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed),
                            shardings)
    return abstract, shardings


def count(params: Any) -> int:
    """Number of parameter scalars."""
    return sum(x.size for x in jax.tree.leaves(params))


def tree_bytes(tree: Any, *, per_device: bool = False) -> int:
    """Bytes of every array leaf at its dtype's bit width (int4 counts 4 bits, as TPU/GPU pack it): of the whole
    arrays, or with `per_device` of one device's shard (the leaves carry shardings, e.g. abstract params)."""
    bits = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if per_device else leaf.shape
        bits += math.prod(shape) * jax.dtypes.itemsize_bits(leaf.dtype)
    return (bits + 7) // 8
