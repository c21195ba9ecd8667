"""The first real GPU, in under 5 minutes: Sora's T5 v1.1 base and large train steps at 512 / 114 in bf16, beside HF
PyTorch T5 on the same GPU, and which attention XLA picked. Installs nothing itself:

    pip install -e ".[cuda,bench]"           # jax[cuda12], torch, transformers
    python bench/gpu_step.py                 # base and large; --models=small --allow_cpu to try it on a CPU

For each model it prints the compile time, the median step time of --repeats steps after a warm-up step, tokens/s
(input + target tokens, padding-free random rows) and MFU (sora_jax.training.flops: analytic FLOPs over the GPU's
dense bf16 peak), for Sora (its real train step: AdamW, z-loss, metrics, donated state) and HF PyTorch (eager, bf16
autocast, AdamW). Attention: Sora calls jax.nn.dot_product_attention; the compiled HLO shows whether XLA lowered it
to cuDNN's fused attention (a __cudnn$fmha* custom call) or to plain XLA ops.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/peers.py, bench/train_step.py
import peers  # noqa: E402
import train_step as bench_train  # noqa: E402

from sora_jax import sharding  # noqa: E402
from sora_jax.model import ModelConfig  # noqa: E402
from sora_jax.training import flops  # noqa: E402
from sora_jax.training import state as state_lib  # noqa: E402

PRESETS = {"small": "t5_v1_1_small", "base": "t5_v1_1_base", "large": "t5_v1_1_large"}
BATCH = {"small": 64, "base": 32, "large": 16}  # rows per step: fit an 80 GB card with room to spare


def attention_kind(hlo: str) -> str:
    """What the compiled step does for attention: cuDNN fused attention calls, or XLA's own ops."""
    fused = sorted(set(re.findall(r"__cudnn\$fmha\w*", hlo)))
    if fused:
        return f"cuDNN fused attention ({', '.join(fused)})"
    return "XLA (no cuDNN fused-attention call in the HLO: softmax(QK^T + bias)V as separate fusions)"


def main() -> int:
    """Time each model in Sora and HF PyTorch, print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="base,large", help="comma-separated: small, base, large")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=0, help="rows per step (default: 64 small, 32 base, 16 large)")
    parser.add_argument("--allow_cpu", action="store_true", help="run without a GPU (a smoke test of this script)")
    parser.add_argument("--peers", default="torch", help="'torch' or 'none'")
    args = parser.parse_args()
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.allow_cpu:
        print(f"error: no GPU visible to jax (found {device.device_kind}); pip install -e '.[cuda,bench]'",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    print(f"{device.device_kind}, jax {jax.__version__}; 512 + 114 tokens per row, bf16 compute, f32 params")
    for name in args.models.split(","):
        batch = args.batch or BATCH[name]
        cfg = ModelConfig.from_preset(PRESETS[name], dtype="bfloat16", dropout_rate=0.0, scan_layers=True)
        step_flops = flops.train_step_flops(cfg, batch, 512, 114).total
        tokens = batch * (512 + 114)
        trainer = bench_train.SoraTrainer(cfg, bench_train.run_config(cfg, batch, 512, 114))
        compiled, compile_s = trainer.compile()
        rows = bench_train.random_batch(cfg, batch, 512, 114)
        setup = trainer.setup
        state = [state_lib.init_train_state(setup.init_params, setup.tx, setup.state_shardings, 0, setup.rng_impl)]
        device_batch = sharding.global_batch(rows, trainer.mesh)

        def sora_step(state=state, compiled=compiled, device_batch=device_batch) -> None:
            state[0], metrics = compiled(state[0], device_batch)
            jax.block_until_ready(metrics["loss"])

        seconds = {"Sora": bench_train.median_seconds(sora_step, args.repeats, 1)}
        if args.peers == "torch":
            seconds["HF PyTorch"] = bench_train.median_seconds(peers.torch_train_step(cfg, rows), args.repeats, 1)
        print(f"{name} ({batch} rows): Sora compiled in {compile_s:.0f} s; attention: "
              f"{attention_kind(compiled.as_text())}")
        for who, s in seconds.items():
            mfu = flops.mfu(step_flops, s, 1, device.device_kind)
            print(f"  {who:<11} {s * 1e3:8.1f} ms/step  {tokens / s:10,.0f} tokens/s  MFU "
                  f"{'n/a' if mfu is None else f'{mfu:.1%}'}", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
