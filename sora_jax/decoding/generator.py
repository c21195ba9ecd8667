"""One decoder for a model on a mesh: compiled once per DecodeOptions, plus sequence scoring.

The evaluator and the Predictor both decode through it, so training's periodic eval, `sora-eval` and
`sora-predict` run exactly the same compiled code for the same options.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sora_jax import sharding
from sora_jax.data.tasks import Task
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.decoding.search import DecodeOptions, decode
from sora_jax.model import EncoderDecoder, shift_right


def sequence_log_prob(params: Any, encoder_tokens_BS: jax.Array, output_BL: jax.Array, *,
                      model: EncoderDecoder) -> jax.Array:
    """log P(output | input) of each row: teacher-forced, summed up to and including the first EOS."""
    cfg = model.config
    logits_BLV = model.apply({"params": params}, encoder_tokens_BS, shift_right(output_BL, cfg.decoder_start_id))
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    token_logp_BL = jnp.take_along_axis(logp_BLV, output_BL[:, :, None], axis=-1)[:, :, 0]
    is_eos_BL = (output_BL == cfg.eos_id).astype(jnp.int32)
    after_eos_BL = (jnp.cumsum(is_eos_BL, axis=1) - is_eos_BL) > 0
    return jnp.sum(jnp.where(after_eos_BL, 0.0, token_logp_BL), axis=1)


class Generator:
    """`decode(params, tokens, options, rng)` and `score(params, tokens, outputs)` for `model` on `mesh`, with
    params on `param_shardings` and batches split over the data-parallel axes. Call inside the mesh's
    `sharding.activate` (the model's activation constraints need it while tracing)."""

    def __init__(self, model: EncoderDecoder, param_shardings: Any, mesh: Mesh):
        self.model, self.mesh = model, mesh
        self._param_shardings = param_shardings
        self._batch = sharding.batch_sharding(mesh)
        self._replicated = sharding.replicated(mesh)
        self._compiled: dict[DecodeOptions, Any] = {}
        self._scorer = jax.jit(lambda p, t, o: sequence_log_prob(p, t, o, model=model),
                               in_shardings=(param_shardings, self._batch, self._batch),
                               out_shardings=self._replicated)

    def _for(self, options: DecodeOptions) -> Any:
        key = dataclasses.replace(options, seed=0)  # The seed arrives as an rng argument: no recompilation.
        if key not in self._compiled:
            def run(params: Any, tokens_BS: jax.Array, rng: jax.Array) -> jax.Array:
                return decode(params, tokens_BS, key, model=self.model, rng=rng)

            self._compiled[key] = jax.jit(run, in_shardings=(self._param_shardings, self._batch, self._replicated),
                                          out_shardings=self._replicated)
        return self._compiled[key]

    def jitted(self, options: DecodeOptions) -> Any:
        """The jitted `(params, tokens_BS, rng) -> outputs` for `options` (to lower ahead of time)."""
        return self._for(options)

    def decode(self, params: Any, tokens_BS: jax.Array, options: DecodeOptions,
               rng: jax.Array | None = None) -> jax.Array:
        """int32 [B, max_length] outputs, replicated (see `decoding.decode`); `rng` defaults to options.seed."""
        rng = jax.random.key(options.seed) if rng is None else rng
        return self._for(options)(params, jax.device_put(tokens_BS, self._batch), rng)

    def score(self, params: Any, tokens_BS: jax.Array, output_BL: jax.Array) -> jax.Array:
        """Each row's log-probability of `output_BL` (see `sequence_log_prob`), replicated."""
        return self._scorer(params, jax.device_put(tokens_BS, self._batch), jax.device_put(output_BL, self._batch))


# --- the task's decoding defaults ---------------------------------------------------------------------------
def default_method(task: Task) -> str:
    """Beam search for translation (it gains BLEU there), greedy for classification and generation."""
    return "beam" if task.kind == "translation" else "greedy"


def default_max_length(task: Task, tokenizer: Tokenizer, max_target_length: int) -> int:
    """Tokens to decode: for a classification task with labels, the longest label + EOS (labels are a few
    pieces long, so classification evals stay cheap); otherwise `max_target_length`."""
    if task.kind == "classification" and task.labels:
        return max(len(ids) for ids in tokenizer.encode(list(task.labels))) + 1
    return max_target_length


def task_decode_options(task: Task, tokenizer: Tokenizer, max_target_length: int, *, method: str | None = None,
                        max_length: int | None = None, **options: Any) -> DecodeOptions:
    """DecodeOptions with the task's defaults for what is None (method, max_length); the other keyword
    arguments (beam_size, alpha, temperature, top_k, top_p, seed) as given. Bad values are SoraErrors."""
    return DecodeOptions(method=default_method(task) if method is None else method,
                         max_length=(default_max_length(task, tokenizer, max_target_length) if max_length is None
                                     else max_length), **options)


def describe(options: DecodeOptions) -> str:
    """'greedy, max_length 8' / 'beam 4 (alpha 0.6), max_length 64' / 'sample (temperature 1.0, ...)'."""
    if options.method == "beam":
        how = f"beam {options.beam_size} (alpha {options.alpha})"
    elif options.method == "sample":
        how = (f"sample (temperature {options.temperature}, top_k {options.top_k}, top_p {options.top_p}, "
               f"seed {options.seed})")
    else:
        how = "greedy"
    return f"{how}, max_length {options.max_length}"
