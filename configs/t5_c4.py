"""T5 v1.1 base pretraining on C4 (span corruption, inputs 512 / targets 114): the config a pod user starts from.

    # Prepare C4 once (on a machine with network; about 800 GB as array_record), into a bucket or a local disk:
    python -c "import tensorflow_datasets as tfds; tfds.builder('c4/en:3.1.0', data_dir='DATA_DIR', \
        file_format='array_record').download_and_prepare()"
    # On every host of the slice (see tpu_setup.sh; DATA_DIR mounted with gcsfuse for grain to read):
    python train.py --config=configs/t5_c4.py --workdir=gs://BUCKET/runs/t5_c4 --config.data.data_dir=DATA_DIR
    python train.py --config=configs/t5_c4.py --dry_run    # shardings and memory per device, no data

As T5X's t5_1_1 base recipe: Adafactor with 1e-2 / rsqrt decay after 10k warmup steps, no dropout while
pretraining, bf16 compute with f32 params, T5's 32k sentencepiece vocabulary (+100 sentinels), layers scanned
(compile time independent of depth), parameters and optimizer state fully sharded over the devices (FSDP).
"""

from sora_jax.config import base_config


def get_config():
    config = base_config()
    config.data.task = "tfds:c4/en:3.1.0"
    config.data.task_options.text_key = "text"
    config.data.objective = "span_corruption"
    config.data.max_input_length = 512
    config.data.max_target_length = 114
    config.data.num_packing_bins = 64
    config.data.max_eval_examples = 8192
    config.data.num_sample_predictions = 0
    config.model.preset = "t5_v1_1_base"
    config.model.dropout_rate = 0.0
    config.model.dtype = "bfloat16"
    config.model.param_dtype = "float32"
    config.model.scan_layers = True
    config.model.remat_policy = "dots_with_no_batch_dims_saveable"
    config.tokenizer.model_path = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
    config.tokenizer.extra_ids = 100
    config.num_train_steps = 524_288  # T5's 2^19 steps.
    config.batch_size = 256  # Global rows of 512 + 114 tokens (packed).
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_000
    config.optimizer.name = "adafactor"
    config.optimizer.learning_rate = 1e-2
    config.optimizer.schedule = "rsqrt"
    config.optimizer.warmup_steps = 10_000
    config.optimizer.weight_decay = 0.0
    config.optimizer.grad_clip_norm = 0.0
    config.loss.z_loss = 1e-4
    config.mesh.data = 1
    config.mesh.fsdp = -1  # Every device shards params and optimizer state; the batch splits over them too.
    return config
