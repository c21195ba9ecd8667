"""What T5Gemma's attention-logit soft-capping costs: jax.nn.dot_product_attention (no cap) against Sora's einsum
path with cap * tanh(logits / cap) (sora_jax.model.attention.softcapped_attention), forward + backward.

    python bench/softcap.py                      # CPU-sized defaults
    python bench/softcap.py --batch 16 --length 2048 --heads 8 --kv_heads 4 --head_dim 256   # on an accelerator

Prints the median step time of each and the ratio; also the same for one whole T5Gemma train-step gradient
(model forward + backward) with attn_logit_softcapping 0 vs 50.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sora_jax.model import EncoderDecoder, ModelConfig  # noqa: E402
from sora_jax.model.attention import softcapped_attention  # noqa: E402


def timed(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_only(args: argparse.Namespace) -> None:
    keys = jax.random.split(jax.random.key(0), 3)
    dtype = jnp.dtype(args.dtype)
    q = jax.random.normal(keys[0], (args.batch, args.length, args.heads, args.head_dim), dtype)
    k = jax.random.normal(keys[1], (args.batch, args.length, args.kv_heads, args.head_dim), dtype)
    v = jax.random.normal(keys[2], (args.batch, args.length, args.kv_heads, args.head_dim), dtype)
    mask = jnp.tril(jnp.ones((args.length, args.length), bool))[None, None]
    scale = args.head_dim**-0.5

    def plain(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)

    def capped(q, k, v):
        return softcapped_attention(q, k, v, mask, scale, 50.0)

    def grad_of(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2), argnums=(0, 1, 2)))

    t_plain = timed(grad_of(plain), q, k, v, repeats=args.repeats)
    t_capped = timed(grad_of(capped), q, k, v, repeats=args.repeats)
    print(f"attention fwd+bwd B={args.batch} L={args.length} H={args.heads} G={args.kv_heads} K={args.head_dim} "
          f"{args.dtype}: dot_product_attention {t_plain * 1e3:.1f} ms, soft-capped {t_capped * 1e3:.1f} ms, "
          f"ratio {t_capped / t_plain:.2f}")


def whole_model(args: argparse.Namespace) -> None:
    base = ModelConfig.from_preset(args.preset, vocab_size=args.vocab, dtype=args.dtype)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.length), 3, args.vocab)
    results = {}
    for cap in (0.0, 50.0):
        cfg = dataclasses.replace(base, attn_logit_softcapping=cap)
        model = EncoderDecoder(cfg)
        params = jax.jit(model.init)(jax.random.key(0), tokens, tokens)["params"]

        def loss(p, model=model):
            return jnp.mean(model.apply({"params": p}, tokens, tokens))

        results[cap] = timed(jax.jit(jax.grad(loss)), params, repeats=args.repeats)
    print(f"{args.preset} train-step gradient B={args.batch} L={args.length} (inputs and targets) {args.dtype}: "
          f"no cap {results[0.0] * 1e3:.1f} ms, attn cap 50 {results[50.0] * 1e3:.1f} ms, "
          f"ratio {results[50.0] / results[0.0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--preset", default="t5gemma_tiny")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"backend: {jax.devices()[0].device_kind}")
    attention_only(args)
    whole_model(args)


if __name__ == "__main__":
    main()
