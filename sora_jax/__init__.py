"""Sora: a T5-family encoder-decoder Transformer trainer in JAX/Flax, from a laptop CPU to a TPU pod."""

from typing import Any

from sora_jax.errors import SoraError

__all__ = ["LoadedRun", "Predictor", "SoraError", "evaluate_workdir", "export_workdir", "load_workdir"]
__version__ = "0.1.0"

# Imported on first use: `import sora_jax` stays cheap (no jax) for the command lines and config tools.
_LAZY = {"Predictor": "sora_jax.serving.predictor", "load_workdir": "sora_jax.workdir",
         "LoadedRun": "sora_jax.workdir", "evaluate_workdir": "sora_jax.evaluation.workdir_eval",
         "export_workdir": "sora_jax.serving.export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sora_jax' has no attribute {name!r}")
