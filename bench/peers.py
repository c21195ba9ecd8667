"""The Hugging Face T5 implementations that bench/train_step.py measures Sora against (PyTorch and Flax).

Both are imported lazily: they need the optional `bench` extra (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sora_jax.interop.hf_t5_config import config_to_hf
from sora_jax.model import ModelConfig


def versions() -> str:
    """The versions behind the peer columns: HF PyTorch and HF Flax T5 both come from the bench extra's
    transformers 4.x (Flax T5 is gone from transformers 5)."""
    import importlib.metadata as metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"peers: HF PyTorch T5 (transformers {version('transformers')}, torch {version('torch')}), "
            f"HF Flax T5 (transformers {version('transformers')}, flax {version('flax')}); "
            f"Sora on jax {version('jax')}")


def hf_config(cfg: ModelConfig) -> Any:
    """transformers.T5Config of the same architecture (Sora's own export mapping)."""
    from transformers import T5Config

    return T5Config(**{k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type")})


def torch_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: Any) -> Any:
    import torch

    # bf16 compute with f32 master weights on GPUs, like Sora's dtype=bfloat16 / param_dtype=float32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def torch_train_step(cfg: ModelConfig, batch: dict[str, np.ndarray], learning_rate: float = 1e-3,
                     clip: float = 1.0) -> Callable[[], None]:
    """One HF PyTorch T5 AdamW step (train mode: dropout on) with gradient clipping, as a no-argument call."""
    import torch
    from transformers import T5ForConditionalGeneration

    device = torch_device()
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(hf_config(cfg)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    inputs = torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long, device=device)
    labels = torch.as_tensor(batch["decoder_target_tokens"], dtype=torch.long, device=device)

    def step() -> None:
        with _autocast(device):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def torch_generate(hf_dir: Path, inputs_BS: np.ndarray, new_tokens: int, beams: int) -> Callable[[], np.ndarray]:
    """HF PyTorch `generate` (greedy or beam search) from a saved checkpoint, as a no-argument call."""
    import torch
    from transformers import T5ForConditionalGeneration

    device = torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = T5ForConditionalGeneration.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    ids = torch.as_tensor(inputs_BS, dtype=torch.long, device=device)

    def generate() -> np.ndarray:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 num_beams=beams, do_sample=False)
        return out.cpu().numpy()

    return generate


def _patch_flax_t5() -> None:
    # transformers' Flax T5 still calls jnp.clip(a_max=...), which jax 0.10 removed; hand it a jnp whose clip
    # takes the old keywords (nothing else changes).
    import transformers.models.t5.modeling_flax_t5 as flax_t5

    if isinstance(flax_t5.jnp, types.SimpleNamespace):
        return
    shim = types.SimpleNamespace(**{n: getattr(jnp, n) for n in dir(jnp) if not n.startswith("__")})
    shim.clip = lambda x, a_min=None, a_max=None: jnp.clip(x, min=a_min, max=a_max)
    flax_t5.jnp = shim


def flax_train_step(cfg: ModelConfig, batch: dict[str, np.ndarray], dtype: Any,
                    learning_rate: float = 1e-3, clip: float = 1.0) -> Callable[[], None]:
    """One jitted HF Flax T5 AdamW step (dropout on, clipped, state donated), as a no-argument call."""
    _patch_flax_t5()
    from transformers import FlaxT5ForConditionalGeneration
    from transformers.models.t5.modeling_flax_t5 import shift_tokens_right

    model = FlaxT5ForConditionalGeneration(hf_config(cfg), seed=0, dtype=dtype, _do_init=True)
    tx = optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(learning_rate, b1=0.9, b2=0.98, weight_decay=0.01))
    inputs = jnp.asarray(batch["encoder_input_tokens"])
    labels = jnp.asarray(batch["decoder_target_tokens"])
    decoder_inputs = jnp.asarray(shift_tokens_right(np.asarray(labels), cfg.pad_id, cfg.decoder_start_id))

    def train(params: Any, opt_state: Any, rng: jax.Array) -> tuple[Any, Any, jax.Array, jax.Array]:
        rng, dropout_rng = jax.random.split(rng)

        def loss_fn(p: Any) -> jax.Array:
            logits = model(inputs, decoder_input_ids=decoder_inputs, params=p, dropout_rng=dropout_rng,
                           train=True).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng, loss

    compiled = jax.jit(train, donate_argnums=(0, 1))
    state = [model.params, tx.init(model.params), jax.random.key(0)]

    def step() -> None:
        state[0], state[1], state[2], loss = compiled(*state)
        jax.block_until_ready(loss)

    return step
