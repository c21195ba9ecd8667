"""A tiny T5Gemma 2 trained from scratch on 2 CPU cores: every T5Gemma 2 text feature on a built-in task.

    python train.py --config=configs/t5gemma2_tiny.py --workdir=runs/t5gemma2_tiny
    sora-eval --workdir=runs/t5gemma2_tiny
    sora-export --workdir=runs/t5gemma2_tiny --out=runs/t5gemma2_tiny/hf  # T5Gemma2ForConditionalGeneration loads it

The model (preset t5gemma2_tiny): 128 wide, a 3-layer encoder and a 2-layer decoder, grouped-query attention (4 query
heads, 2 key/value heads) with QK-norm, a window of 16 on sliding layers with their own RoPE base, one embedding for
both stacks and the head, and the decoder's merged self- and cross-attention.
Takes an optional task name: --config=configs/t5gemma2_tiny.py:gettext_en_zh
"""

from pathlib import Path

from sora_jax.config import load_config_file


def get_config(task: str | None = None):
    base = str(Path(__file__).with_name("t5gemma_tiny.py"))
    config = load_config_file(f"{base}:{task}" if task else base)
    config.model.preset = "t5gemma2_tiny"
    return config
