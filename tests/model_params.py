"""Random parameters for model tests, made with numpy (a compiled `model.init` costs seconds per config)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sora_jax.model import EncoderDecoder


def random_params(model: EncoderDecoder, seed: int = 0) -> dict:
    """Params shaped like `model.init`'s: unit norm scales, N(0, 1) embeddings, N(0, 0.2**2) elsewhere."""
    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"])
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        std = 1.0 if path[-2].key == "shared" else 0.2
        return jnp.asarray(rng.normal(size=leaf.shape) * std, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
