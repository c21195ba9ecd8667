"""Continued pretraining of a released T5Gemma (a Hugging Face checkpoint directory) on unlabelled text with the
PrefixLM objective (T5Gemma's "prefixlm" checkpoints were adapted with it).

    python train.py --config=configs/t5gemma_pretrain.py:ckpt/t5gemma-2b-2b-prefixlm --workdir=runs/t5gemma_cpt \
        --config.data.data_dir=DATA_DIR
    python train.py --config=configs/t5gemma_pretrain.py:ckpt/t5gemma-2b-2b-prefixlm --dry_run

UL2 (data.objective="ul2") and span corruption need T5-style sentinel ids, which Gemma's tokenizer does not have
(Sora loads it with extra_ids=0, and adding ids would change the embedding's shape): they are refused with one line.
"""

from sora_jax.config import base_config
from sora_jax.errors import SoraError


def get_config(directory: str | None = None):
    if not directory:
        raise SoraError("configs/t5gemma_pretrain.py needs the checkpoint directory: "
                        "--config=configs/t5gemma_pretrain.py:DIR")
    config = base_config()
    config.init_from = f"hf:{directory}"
    config.data.task = "tfds:c4/en:3.1.0"
    config.data.task_options.text_key = "text"
    config.data.objective = "prefix_lm"
    config.data.max_input_length = 512
    config.data.max_target_length = 512
    config.data.num_packing_bins = 64
    config.data.max_eval_examples = 4096
    config.data.num_sample_predictions = 0
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.scan_layers = True
    config.model.remat_policy = "dots_with_no_batch_dims_saveable"
    config.model.dropout_rate = 0.0
    config.num_train_steps = 20_000
    config.batch_size = 256
    config.log_every_steps = 100
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 1_000
    config.optimizer.name = "adafactor"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 1_000
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 0.0
    config.mesh.data = 1
    config.mesh.fsdp = -1
    return config
