"""Decoding speed with and without the KV cache, on a T5-small-sized model (run by hand, not a test).

    python bench/decode.py [--batch 8] [--input_length 64] [--output_length 32] [--repeats 3]

Model: the `t5_v1_1_small` preset (8+8 layers, d_model 512, 6 heads, vocab 32128; 77M parameters), random
params (normal, fan-in scaled), float32, on the CPU (or whatever jax's default device is).

- "KV cache": `search.greedy_decode` / `search.beam_search` (one compiled while-loop each; each step feeds
  one token per row and reads keys/values of earlier tokens from the cache).
- "no cache": the same model decoding by re-running the decoder over the whole growing prefix at every step
  (a teacher-forced forward of [start, y1, ..., yt] whose last position gives the next token), one jitted step
  per prefix length, driven by a Python loop. The encoder runs once per input in both cases (recomputing it
  each step as well would only make the uncached numbers worse). Its beam search keeps the N best of the N x V
  extensions per step, like the cached one, without the finished-hypothesis bookkeeping.

Both variants run the same number of steps (the cached decoder's count: random params rarely emit EOS, so
normally `--output_length`). Output tokens/s = batch rows x steps / seconds (for beam search: per input row,
not per hypothesis), median of `--repeats` timed runs after a warm-up run that compiles everything; the
uncached greedy tokens are checked to equal the cached ones. With the defaults this takes about 3-4 minutes
on 2 CPU cores, most of it compiling the 2 x 32 uncached step functions; lower --output_length to shorten it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sora_jax.decoding import search
from sora_jax.model import EncoderDecoder, ModelConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=64)
    parser.add_argument("--output_length", type=int, default=32)
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="t5_v1_1_small")
    return parser.parse_args()


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls of fn() (after one warm-up call), and the last result."""
    result = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def steps_run(tokens_BL: np.ndarray, eos_id: int) -> int:
    """Steps a cached loop ran: it stops when every row has emitted EOS (or at max_length)."""
    lengths = [row.tolist().index(eos_id) + 1 if eos_id in row else len(row) for row in tokens_BL]
    return max(lengths)


def random_params(model: EncoderDecoder, cfg: ModelConfig, rng: np.random.Generator) -> dict:
    """Normal params with fan-in scaling (unit-variance embeddings, unit norm scales), filled from numpy:
    compiling `model.init` for this size would cost more time than the whole fill."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"])

    def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = path[-1].key
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "embedding":
            std = 1.0
        else:  # q/k/v, wi, logits_dense: [d_model, ...]; o: [heads, d_kv, d_model]; wo: [d_ff, d_model].
            std = 1.0 / np.sqrt(cfg.d_model if leaf.shape[0] == cfg.d_model else np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * std, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def main() -> None:
    args = parse_args()
    cfg = ModelConfig.from_preset(args.preset, vocab_size=32128, dropout_rate=0.0)
    model = EncoderDecoder(cfg)
    rng = np.random.default_rng(0)
    # Random inputs of full length (no padding), ids past the special tokens.
    enc_BS = jnp.asarray(rng.integers(3, cfg.vocab_size, (args.batch, args.input_length)), jnp.int32)
    started = time.perf_counter()
    params = random_params(model, cfg, rng)
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"model {args.preset}: {count / 1e6:.1f}M parameters, float32, {jax.devices()[0].platform}; batch "
          f"{args.batch}, input {args.input_length} tokens, output {args.output_length} tokens, beam "
          f"{args.beam_size}, median of {args.repeats} (init {time.perf_counter() - started:.1f}s)", flush=True)

    L, N, B, V = args.output_length, args.beam_size, args.batch, cfg.vocab_size
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))

    # --- with the cache -----------------------------------------------------------------------------------
    greedy = jax.jit(functools.partial(search.greedy_decode, model=model, max_length=L))
    beam = jax.jit(functools.partial(search._beam_loop, model=model, max_length=L, beam_size=N, alpha=0.6))
    rows = []
    t = time.perf_counter()
    greedy_s, greedy_tokens = timed(lambda: greedy(params, enc_BS), args.repeats)
    greedy_tokens = np.asarray(greedy_tokens)
    greedy_steps = steps_run(greedy_tokens, cfg.eos_id)
    print(f"  greedy, cache: {greedy_s:.3f}s ({time.perf_counter() - t:.0f}s with compile)", flush=True)
    t = time.perf_counter()
    beam_s, (_, _, beam_steps) = timed(lambda: beam(params, enc_BS), args.repeats)
    beam_steps = int(beam_steps)
    print(f"  beam, cache: {beam_s:.3f}s ({time.perf_counter() - t:.0f}s with compile)", flush=True)

    # --- without the cache: the decoder over the whole prefix at each step ----------------------------------
    @jax.jit
    def greedy_step(p, encoded_BSD, enc, prefix_BT):
        logits_BTV = model.apply({"params": p}, encoded_BSD, enc, prefix_BT, method=model.decode)
        next_B1 = jnp.argmax(logits_BTV[:, -1], axis=-1).astype(jnp.int32)[:, None]
        return jnp.concatenate([prefix_BT, next_B1], axis=1)

    def greedy_no_cache():
        encoded = encode(params, enc_BS)
        prefix = jnp.full((B, 1), cfg.decoder_start_id, jnp.int32)
        for _ in range(greedy_steps):
            prefix = greedy_step(params, encoded, enc_BS, prefix)
        return prefix[:, 1:]

    @jax.jit
    def beam_step(p, encoded_FSD, enc_F, seqs_BNT, logp_BN):
        t_len = seqs_BNT.shape[-1]
        logits_FTV = model.apply({"params": p}, encoded_FSD, enc_F, seqs_BNT.reshape(B * N, t_len),
                                 method=model.decode)
        cand_BNV = logp_BN[:, :, None] + jax.nn.log_softmax(logits_FTV[:, -1]).reshape(B, N, V)
        top_BN, index_BN = jax.lax.top_k(cand_BNV.reshape(B, N * V), N)
        parent_BN, token_BN = index_BN // V, (index_BN % V).astype(jnp.int32)
        seqs_BNT = jnp.take_along_axis(seqs_BNT, parent_BN[:, :, None], axis=1)
        return jnp.concatenate([seqs_BNT, token_BN[:, :, None]], axis=-1), top_BN

    def beam_no_cache():
        encoded = jnp.repeat(encode(params, enc_BS), N, axis=0)
        enc_F = jnp.repeat(enc_BS, N, axis=0)
        seqs = jnp.full((B, N, 1), cfg.decoder_start_id, jnp.int32)
        logp = jnp.where(jnp.arange(N) == 0, 0.0, -jnp.inf)[None, :].repeat(B, axis=0)
        for _ in range(beam_steps):
            seqs, logp = beam_step(params, encoded, enc_F, seqs, logp)
        return seqs

    t = time.perf_counter()
    greedy_nc_s, greedy_nc_tokens = timed(greedy_no_cache, args.repeats)
    print(f"  greedy, no cache: {greedy_nc_s:.3f}s ({time.perf_counter() - t:.0f}s with compile)", flush=True)
    t = time.perf_counter()
    beam_nc_s, _ = timed(beam_no_cache, args.repeats)
    print(f"  beam, no cache: {beam_nc_s:.3f}s ({time.perf_counter() - t:.0f}s with compile)", flush=True)

    matched = np.asarray(greedy_nc_tokens) == greedy_tokens[:, :greedy_steps]
    rows = [("greedy", "KV cache", greedy_steps, greedy_s, greedy_nc_s),
            ("greedy", "no cache", greedy_steps, greedy_nc_s, greedy_nc_s),
            (f"beam-{N}", "KV cache", beam_steps, beam_s, beam_nc_s),
            (f"beam-{N}", "no cache", beam_steps, beam_nc_s, beam_nc_s)]
    print(f"\n{'method':<8} {'decoder':<9} {'steps':>5} {'seconds':>8} {'tokens/s':>9} {'vs no cache':>11}")
    for method, variant, steps, seconds, baseline in rows:
        print(f"{method:<8} {variant:<9} {steps:>5} {seconds:>8.3f} {B * steps / seconds:>9.1f} "
              f"{baseline / seconds:>10.1f}x")
    print(f"greedy tokens identical with and without the cache: {matched.mean():.1%} of {matched.size}")


if __name__ == "__main__":
    main()
