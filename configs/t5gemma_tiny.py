"""A tiny T5Gemma trained from scratch on 2 CPU cores in about a minute: every T5Gemma feature on a built-in task.

    python train.py --config=configs/t5gemma_tiny.py --workdir=runs/t5gemma_tiny
    sora-eval --workdir=runs/t5gemma_tiny
    sora-predict --workdir=runs/t5gemma_tiny --input="这个手机很好用"
    sora-export --workdir=runs/t5gemma_tiny --out=runs/t5gemma_tiny/hf   # T5GemmaForConditionalGeneration loads it

The model (preset t5gemma_tiny): a 160-wide encoder and a 128-wide decoder, 2 layers each, grouped-query attention
(4 query heads, 2 key/value heads), a sliding window of 16 on alternate layers, attention and final soft-capping.
Takes an optional task name: --config=configs/t5gemma_tiny.py:gettext_en_zh
"""

from pathlib import Path

from sora_jax.config import load_config_file


def get_config(task: str | None = None):
    tiny = str(Path(__file__).with_name("tiny.py"))
    config = load_config_file(f"{tiny}:{task}" if task else tiny)
    config.model.preset = "t5gemma_tiny"
    config.num_train_steps = 100
    config.eval_every_steps = 50
    config.checkpoint_every_steps = 50
    config.log_every_steps = 10
    config.batch_size = 16
    config.data.max_input_length = 64
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 10
    return config
