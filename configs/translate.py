"""English -> Chinese translation of software messages (gettext catalogs on this machine).

    python train.py --config=configs/translate.py
    python train.py --config=configs/translate.py:zh_en     # the other direction

Needs the gettext `.mo` catalogs of a Debian-family system (/usr/share/locale/zh_CN/LC_MESSAGES). In minutes
on a CPU the loss falls well below its start and sample translations appear in the log; BLEU stays low.
"""

from sora_jax.config import base_config


def get_config(direction: str | None = None):
    config = base_config()
    config.data.task = "gettext_zh_en" if direction == "zh_en" else "gettext_en_zh"
    config.model.preset = "small_cpu"
    config.num_train_steps = 1500
    config.batch_size = 32
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.data.max_input_length = 64
    config.data.max_target_length = 64
    config.data.max_eval_examples = 512
    config.tokenizer.vocab_size = 8000
    config.optimizer.learning_rate = 1e-3
    # Validation loss is lowest near step 500 and BLEU peaks near 1000 (the corpus is small): keep the best params
    # by BLEU in <workdir>/best for `sora-eval --step=best`.
    config.best_metric = "bleu"
    return config
