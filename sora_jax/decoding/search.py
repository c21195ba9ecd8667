"""Autoregressive decoding with the model's key/value cache: greedy, sampling and beam search.

Each method is one compiled `lax.while_loop` that exits as soon as every row of the batch is finished, so a
generous `max_length` costs memory (the cache) but no steps. Outputs are int32 [B, max_length] token ids:
the generated tokens, EOS included, then pad_id (0) after it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sora_jax.errors import SoraError
from sora_jax.model import EncoderDecoder

METHODS = ("greedy", "beam", "sample")
NEG_INF = float("-inf")


def _check(ok: bool, name: str, value: Any, requirement: str, fix: str) -> None:
    if not ok:
        raise SoraError(f"decoding option {name}={value!r} {requirement}; {fix}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_max_length(max_length: Any) -> None:
    _check(_is_int(max_length) and max_length >= 1, "max_length", max_length, "must be an integer >= 1",
           "set it to the longest output wanted, EOS included")


def _check_beam(beam_size: Any, alpha: Any) -> None:
    _check(_is_int(beam_size) and beam_size >= 1, "beam_size", beam_size, "must be an integer >= 1",
           "use e.g. 4 (1 is greedy decoding)")
    _check(_is_real(alpha), "alpha", alpha, "must be a finite number", "use 0.6 (GNMT) or 0.0 for no length penalty")


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> None:
    _check(_is_real(temperature) and temperature >= 0, "temperature", temperature, "must be a finite number >= 0",
           "use 1.0 to sample from the model, 0 for greedy")
    _check(_is_int(top_k) and top_k >= 0, "top_k", top_k, "must be an integer >= 0", "use 0 to disable top-k")
    _check(_is_real(top_p) and 0 < top_p <= 1, "top_p", top_p, "must be in (0, 1]", "use 1.0 to disable top-p")


def init_decode_cache(model: EncoderDecoder, params: Any, encoded_BSD: jax.Array, encoder_tokens_BS: jax.Array,
                      max_length: int) -> Any:
    """Create the decoder cache: self-attention buffers of `max_length`, encoder keys/values projected once."""
    start_B1 = jnp.full((encoder_tokens_BS.shape[0], 1), model.config.decoder_start_id, jnp.int32)
    _, variables = model.apply({"params": params}, encoded_BSD, encoder_tokens_BS, start_B1, decode=True,
                               max_decode_length=max_length, method=model.decode, mutable=["cache"])
    return variables["cache"]


def _decode_step(model: EncoderDecoder, params: Any, cache: Any, encoded_BSD: jax.Array,
                 encoder_tokens_BS: jax.Array, token_B1: jax.Array) -> tuple[jax.Array, Any]:
    """Feeds one token per row at the cache index -> (float32 next-token logits [B, V], updated cache)."""
    logits_B1V, variables = model.apply({"params": params, "cache": cache}, encoded_BSD, encoder_tokens_BS,
                                        token_B1, decode=True, method=model.decode, mutable=["cache"])
    return logits_B1V[:, -1].astype(jnp.float32), variables["cache"]


def _token_loop(params: Any, encoder_tokens_BS: jax.Array, model: EncoderDecoder, max_length: int,
                choose: Callable[[jax.Array, jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
    """One token per row per step, picked by `choose(logits_BV, step) -> ids_B`, until all rows emit EOS.

    Returns (tokens [B, max_length], number of steps run).
    """
    _check_max_length(max_length)
    cfg = model.config
    batch = encoder_tokens_BS.shape[0]
    encoded_BSD = model.apply({"params": params}, encoder_tokens_BS, method=model.encode)
    cache = init_decode_cache(model, params, encoded_BSD, encoder_tokens_BS, max_length)

    def keep_going(carry: tuple) -> jax.Array:
        index, _, _, done_B, _ = carry
        return (index < max_length) & ~jnp.all(done_B)

    def step(carry: tuple) -> tuple:
        index, token_B1, out_BL, done_B, cache = carry
        logits_BV, cache = _decode_step(model, params, cache, encoded_BSD, encoder_tokens_BS, token_B1)
        next_B = choose(logits_BV, index).astype(jnp.int32)
        # Finished rows keep stepping with the batch (their cache writes are harmless) but emit padding.
        next_B = jnp.where(done_B, cfg.pad_id, next_B)
        out_BL = jax.lax.dynamic_update_slice(out_BL, next_B[:, None], (0, index))
        return index + 1, next_B[:, None], out_BL, done_B | (next_B == cfg.eos_id), cache

    start_B1 = jnp.full((batch, 1), cfg.decoder_start_id, jnp.int32)
    init = (jnp.zeros((), jnp.int32), start_B1, jnp.full((batch, max_length), cfg.pad_id, jnp.int32),
            jnp.zeros((batch,), bool), cache)
    steps, _, tokens_BL, _, _ = jax.lax.while_loop(keep_going, step, init)
    return tokens_BL, steps


def _argmax(logits_BV: jax.Array, _: jax.Array) -> jax.Array:
    return jnp.argmax(logits_BV, axis=-1)


def greedy_decode(params: Any, encoder_tokens_BS: jax.Array, *, model: EncoderDecoder,
                  max_length: int) -> jax.Array:
    """Most likely next token at each step, until every row has produced EOS or `max_length` tokens.

    Returns int32 [B, max_length]: the generated ids, EOS included, padding after it.
    """
    return _token_loop(params, encoder_tokens_BS, model, max_length, _argmax)[0]


def _sample_tokens(rng: jax.Array, logits_BV: jax.Array, temperature: float, top_k: int,
                   top_p: float) -> jax.Array:
    """Draws one id per row from softmax(logits / temperature) restricted to the top-k and top-p sets."""
    if temperature == 0:
        return jnp.argmax(logits_BV, axis=-1)
    batch, vocab = logits_BV.shape
    logits_BV = logits_BV / temperature
    # One key per row, derived from the row index, so a row's draw does not depend on the batch size.
    keys_B = jax.vmap(lambda row: jax.random.fold_in(rng, row))(jnp.arange(batch))
    draw = jax.vmap(jax.random.categorical)
    keep = top_k if 0 < top_k < vocab else (vocab if top_p < 1 else 0)
    if not keep:
        return draw(keys_B, logits_BV)
    # top_k returns the kept logits sorted best first, which is also the order the nucleus needs.
    logits_BK, ids_BK = jax.lax.top_k(logits_BV, keep)
    if top_p < 1:
        probs_BK = jax.nn.softmax(logits_BK, axis=-1)
        # The nucleus is the shortest best-first prefix whose mass reaches top_p: a token belongs to it when
        # the mass strictly before it is still below top_p (so the most likely token always does).
        mass_before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
        logits_BK = jnp.where(mass_before_BK < top_p, logits_BK, NEG_INF)
    choice_B = draw(keys_B, logits_BK)
    return jnp.take_along_axis(ids_BK, choice_B[:, None], axis=-1)[:, 0]


def _sample_loop(params: Any, encoder_tokens_BS: jax.Array, rng: jax.Array, model: EncoderDecoder,
                 max_length: int, temperature: float, top_k: int, top_p: float) -> tuple[jax.Array, jax.Array]:
    _check_sampling(temperature, top_k, top_p)

    def choose(logits_BV: jax.Array, index: jax.Array) -> jax.Array:
        # A fresh key per step from the step number: reproducible for a given rng, independent across steps.
        return _sample_tokens(jax.random.fold_in(rng, index), logits_BV, temperature, top_k, top_p)

    return _token_loop(params, encoder_tokens_BS, model, max_length, choose)


def sample_decode(params: Any, encoder_tokens_BS: jax.Array, rng: jax.Array, *, model: EncoderDecoder,
                  max_length: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Ancestral sampling with temperature, top-k and nucleus (top-p) filtering; the same rng gives the same ids.

    temperature 0 is greedy decoding; top_k 0 and top_p 1 disable those filters (both may be combined: top-k
    first, then the nucleus of what is left). The options are static Python numbers. Returns int32 [B, L].
    """
    return _sample_loop(params, encoder_tokens_BS, rng, model, max_length, temperature, top_k, top_p)[0]


def length_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
    """The GNMT length penalty ((5 + length) / 6) ** alpha that divides a finished hypothesis's log-prob."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


_PER_INPUT_CACHE = ("cross_attention", "cached_cross_key", "cached_cross_value")


def _reorder_cache(cache: Any, parent_F: jax.Array) -> Any:
    """Gathers the per-beam cache rows of the chosen parents (F = B * N rows, batch on axis 0)."""

    def gather(path: tuple, leaf: jax.Array) -> jax.Array:
        # Cross-attention keys/values (T5Gemma 2's merged attention keeps them as cached_cross_*) are identical
        # across a row's beams, so gathering them would be a copy.
        if leaf.ndim == 0 or any(getattr(key, "key", None) in _PER_INPUT_CACHE for key in path):
            return leaf
        return jnp.take(leaf, parent_F, axis=0)

    return jax.tree_util.tree_map_with_path(gather, cache)


def _beam_loop(params: Any, encoder_tokens_BS: jax.Array, model: EncoderDecoder, max_length: int,
               beam_size: int, alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Beam search; returns (tokens [B, N, L], scores [B, N], steps run). F = B * N is the flat beam batch.

    Each step ranks every one-token extension of the live beams by log-prob and keeps the best 2N. Those
    among the best N that end with EOS (or reach max_length) become finished, scored log-prob / length
    penalty; the best N that do not end with EOS stay live. A row is done when it holds N finished
    hypotheses, or when its best finished score beats what any live beam could still reach. With N = 1
    this is exactly greedy decoding, whatever alpha is.
    """
    _check_max_length(max_length)
    _check_beam(beam_size, alpha)
    cfg = model.config
    batch, beams, vocab = encoder_tokens_BS.shape[0], beam_size, cfg.vocab_size
    width = min(2 * beams, beams * vocab)  # at most N candidates end with EOS, so 2N leave N that do not
    encoded_BSD = model.apply({"params": params}, encoder_tokens_BS, method=model.encode)
    cache = init_decode_cache(model, params, encoded_BSD, encoder_tokens_BS, max_length)

    # Encoder output and cross-attention keys/values are computed once per input, then repeated per beam
    # (row b's beams are rows b*N .. b*N+N-1).
    def expand(x: jax.Array) -> jax.Array:
        return x if x.ndim == 0 else jnp.repeat(x, beams, axis=0)

    cache = jax.tree.map(expand, cache)
    encoded_FSD, encoder_tokens_FS = expand(encoded_BSD), expand(encoder_tokens_BS)
    rows_B1 = jnp.arange(batch)[:, None]
    max_penalty = length_penalty(max_length, alpha)

    def keep_going(state: tuple) -> jax.Array:
        return (state[0] < max_length) & ~jnp.all(state[6])

    def step(state: tuple) -> tuple:
        index, token_BN, live_BNL, live_logp_BN, done_BNL, done_score_BN, done_B, cache = state
        logits_FV, cache = _decode_step(model, params, cache, encoded_FSD, encoder_tokens_FS,
                                        token_BN.reshape(-1, 1))
        logp_BNV = jax.nn.log_softmax(logits_FV).reshape(batch, beams, vocab)
        cand_BNV = live_logp_BN[:, :, None] + logp_BNV
        top_logp_BK, top_id_BK = jax.lax.top_k(cand_BNV.reshape(batch, beams * vocab), width)
        parent_BK, top_token_BK = top_id_BK // vocab, (top_id_BK % vocab).astype(jnp.int32)
        seqs_BKL = jnp.take_along_axis(live_BNL, parent_BK[:, :, None], axis=1)
        seqs_BKL = jax.lax.dynamic_update_slice(seqs_BKL, top_token_BK[:, :, None], (0, 0, index))
        length = index + 1
        is_eos_BK = top_token_BK == cfg.eos_id

        # Only the best N may finish (a worse EOS extension would not have survived in an N-wide beam);
        # at max_length every surviving hypothesis finishes, truncated.
        finishing_BK = ((is_eos_BK | (length == max_length)) & (jnp.arange(width) < beams)[None, :]
                        & (top_logp_BK > NEG_INF))
        score_BK = jnp.where(finishing_BK, top_logp_BK / length_penalty(length, alpha), NEG_INF)
        merged_score_BM = jnp.concatenate([done_score_BN, score_BK], axis=1)
        merged_BML = jnp.concatenate([done_BNL, seqs_BKL], axis=1)
        new_score_BN, pick_BN = jax.lax.top_k(merged_score_BM, beams)
        new_done_BNL = jnp.take_along_axis(merged_BML, pick_BN[:, :, None], axis=1)
        # A done row keeps its result: its output then does not depend on how long other rows run.
        done_score_BN = jnp.where(done_B[:, None], done_score_BN, new_score_BN)
        done_BNL = jnp.where(done_B[:, None, None], done_BNL, new_done_BNL)

        live_logp_BN, pick_BN = jax.lax.top_k(jnp.where(is_eos_BK, NEG_INF, top_logp_BK), beams)
        live_BNL = jnp.take_along_axis(seqs_BKL, pick_BN[:, :, None], axis=1)
        token_BN = jnp.take_along_axis(top_token_BK, pick_BN, axis=1)
        parent_BN = jnp.take_along_axis(parent_BK, pick_BN, axis=1)
        cache = _reorder_cache(cache, (rows_B1 * beams + parent_BN).reshape(-1))

        # Log-probs only fall as tokens are added, so a live beam of log-prob p can at best score p divided
        # by the largest penalty of the lengths it may still finish at (the penalty is monotonic in length).
        next_penalty = length_penalty(jnp.minimum(length + 1, max_length), alpha)
        best_live_B = live_logp_BN[:, 0] / jnp.maximum(next_penalty, max_penalty)
        settled_B = (done_score_BN[:, -1] > NEG_INF) | (done_score_BN[:, 0] > best_live_B)
        return (length, token_BN, live_BNL, live_logp_BN, done_BNL, done_score_BN, done_B | settled_B, cache)

    # All beams start as the same empty hypothesis: only one is live, or the first top-k would pick N copies.
    live_logp_BN = jnp.where(jnp.arange(beams) == 0, 0.0, NEG_INF)[None, :].repeat(batch, axis=0)
    empty_BNL = jnp.full((batch, beams, max_length), cfg.pad_id, jnp.int32)
    init = (jnp.zeros((), jnp.int32), jnp.full((batch, beams), cfg.decoder_start_id, jnp.int32), empty_BNL,
            live_logp_BN, empty_BNL, jnp.full((batch, beams), NEG_INF, jnp.float32), jnp.zeros((batch,), bool),
            cache)
    state = jax.lax.while_loop(keep_going, step, init)
    return state[4], state[5], state[0]


def beam_search(params: Any, encoder_tokens_BS: jax.Array, *, model: EncoderDecoder, max_length: int,
                beam_size: int, alpha: float = 0.6) -> tuple[jax.Array, jax.Array]:
    """Beam search with the GNMT length penalty -> (tokens int32 [B, N, L], scores float32 [B, N]).

    Beams are sorted best first; a score is the hypothesis's total log-prob (EOS included) divided by
    length_penalty(its length, alpha). Hypotheses end with EOS and are padded after it, except those cut at
    max_length. A row stops once its N finished slots are full or its best hypothesis is settled; slots
    still empty then hold score -inf and padding. beam_size 1 equals greedy decoding.
    """
    tokens_BNL, scores_BN, _ = _beam_loop(params, encoder_tokens_BS, model, max_length, beam_size, alpha)
    return tokens_BNL, scores_BN


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How `decode` generates: frozen and hashable, so it can be a static argument of jax.jit.

    method: "greedy", "beam" (beam_size, alpha) or "sample" (temperature, top_k, top_p, seed).
    """

    method: str = "greedy"
    beam_size: int = 4
    alpha: float = 0.6
    max_length: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, "is unknown", f"use one of {', '.join(METHODS)}")
        _check_max_length(self.max_length)
        _check_beam(self.beam_size, self.alpha)
        _check_sampling(self.temperature, self.top_k, self.top_p)
        _check(_is_int(self.seed), "seed", self.seed, "must be an integer", "use e.g. 0")


def decode(params: Any, encoder_tokens_BS: jax.Array, options: DecodeOptions, *, model: EncoderDecoder,
           rng: jax.Array | None = None) -> jax.Array:
    """Decodes with `options` -> int32 [B, max_length] (the best beam for beam search).

    Sampling uses `rng` when given, else a key from options.seed (then a new seed means a new compilation
    when options are static under jit; pass rng to vary draws cheaply).
    """
    if not isinstance(options, DecodeOptions):
        raise SoraError(f"decode() needs a DecodeOptions, got {type(options).__name__}; build one with "
                        "DecodeOptions(method=..., max_length=...).")
    if options.method == "greedy":
        return greedy_decode(params, encoder_tokens_BS, model=model, max_length=options.max_length)
    if options.method == "beam":
        tokens_BNL, _ = beam_search(params, encoder_tokens_BS, model=model, max_length=options.max_length,
                                    beam_size=options.beam_size, alpha=options.alpha)
        return tokens_BNL[:, 0]
    key = rng if rng is not None else jax.random.key(options.seed)
    return sample_decode(params, encoder_tokens_BS, key, model=model, max_length=options.max_length,
                         temperature=options.temperature, top_k=options.top_k, top_p=options.top_p)
