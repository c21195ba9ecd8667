"""Your own data: TSV (`input<TAB>target`) or JSONL (`{"inputs": ..., "targets": ...}`) files.

    python train.py --config=configs/files.py --workdir=runs/mine \
        --config.data.train_files='data/train*.tsv' --config.data.eval_files='data/dev.tsv'

The files are turned into a TFDS dataset under the workdir (rebuilt when their contents change). Pass
`--config.data.task_options.kind=classification` when the targets are labels, to get exact-match accuracy.
"""

from sora_jax.config import base_config


def get_config():
    config = base_config()
    config.data.task = "files"
    config.model.preset = "small_cpu"
    config.num_train_steps = 2000
    config.batch_size = 32
    # 0 = what the training data needs (printed at start-up): short labels then cost 8 decoder positions, not 64.
    config.data.max_input_length = 0
    config.data.max_target_length = 0
    return config
