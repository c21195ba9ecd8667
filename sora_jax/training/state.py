"""The train state (an explicit pytree) and its sharded creation.

Parameters and optimizer state are created by one jit whose out_shardings come from an abstract init
(`jax.eval_shape`), so no host ever holds the whole model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sora_jax.compression import lora, qat_model
from sora_jax.model import EncoderDecoder, ModelConfig
from sora_jax.model import params as params_lib
from sora_jax.training import optimizer as optimizer_lib


class TrainState(flax.struct.PyTreeNode):
    """Everything a train step reads and writes: step, params, optimizer state, and the dropout RNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # Raw key data (uint32); `rng_impl` says how to read it.


def _opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any, abstract_params: Any,
                         param_shardings: Any, mesh: Mesh) -> Any:
    # Optimizer leaves shaped like their parameter (Adam moments) share its sharding; others (counters,
    # Adafactor's factored row/column statistics) are small and replicated.
    replicated = NamedSharding(mesh, PartitionSpec())

    def for_leaf(state_leaf: Any, param: Any, param_sharding: NamedSharding) -> NamedSharding:
        return param_sharding if state_leaf.shape == param.shape else replicated

    return optax.tree_map_params(
        tx, for_leaf, abstract_opt_state, abstract_params, param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


Split = Callable[[Any], tuple[Any, Any]]  # params -> (trained, frozen); see `TrainingSetup.trainable`.


def _trained(params: Any, trainable: Split | None) -> Any:
    return params if trainable is None else trainable(params)[0]


def train_state_shardings(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                          mesh: Mesh, rules: Any, rng_impl: str,
                          trainable: Split | None = None) -> tuple[TrainState, TrainState]:
    """The abstract TrainState (ShapeDtypeStructs carrying their shardings) and the tree of shardings.

    `init_params(rng)` returns the model's params with logical partitioning boxes (flax `model.init(...)`).
    The optimizer state covers the trained half of `trainable(params)` only (all params when None).
    Nothing is allocated: this is what both a fresh init and a checkpoint restore fill in.
    """
    abstract_params, param_shardings = params_lib.abstract_params(init_params, mesh, rules)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_params)
    abstract_opt_state = jax.eval_shape(tx.init, _trained(abstract_params, trainable))
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=_opt_state_shardings(tx, abstract_opt_state, _trained(abstract_params, trainable),
                                       _trained(param_shardings, trainable), mesh),
        rng=replicated,
    )
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=abstract_opt_state, rng=jax.eval_shape(lambda: _rng_data(0, rng_impl)))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def _rng_data(seed: int, rng_impl: str) -> jax.Array:
    # Raw uint32 key data, not a typed key, so that checkpoints hold a plain array.
    return jax.random.key_data(jax.random.key(seed, impl=rng_impl))


def init_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                     shardings: TrainState, seed: int, rng_impl: str, trainable: Split | None = None) -> TrainState:
    """A fresh TrainState, created directly with its shardings (one jit; nothing whole on one host)."""

    def init(key_data: jax.Array) -> TrainState:
        params_key, dropout_key = jax.random.split(jax.random.wrap_key_data(key_data, impl=rng_impl))
        params = nn.unbox(init_params(params_key))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(_trained(params, trainable)),
                          rng=jax.random.key_data(dropout_key))

    return jax.jit(init, out_shardings=shardings)(_rng_data(seed, rng_impl))


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """The model, its optimizer and schedule, and the train state's abstract shape and shardings."""

    model: EncoderDecoder  # The one the train step and training's evals run (fake-quantized under QAT).
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    init_params: Callable[[jax.Array], Any]
    abstract_state: TrainState
    state_shardings: TrainState
    rng_impl: str  # jax PRNG implementation of the dropout keys (config.rng_impl).
    # LoRA: params -> (adapters [+ norms], frozen base); the optimizer sees only the first. None: train everything.
    trainable: Split | None = None


def build_training_setup(config: ml_collections.ConfigDict, model_config: ModelConfig, mesh: Mesh,
                         rules: Any) -> TrainingSetup:
    """Everything `run` and `--dry_run` need before a state exists; allocates nothing on devices.

    With config.quantization.qat the model is the QAT one (`compression.qat_model`): it reads and updates the same
    float params, so init, checkpoints and the optimizer are those of float training.
    """
    model, trainable = EncoderDecoder(model_config), None
    if config.lora.rank:  # Rank, alpha and targets were validated; a rank too large for a layer is refused here.
        model = lora.configured_lora_model(model, config.lora)
        trainable = functools.partial(lora.split_trainable, train_norms=config.lora.train_norms)
    schedule = optimizer_lib.learning_rate_schedule(config.optimizer, config.num_train_steps)
    tx = optimizer_lib.make_optimizer(config.optimizer, schedule)
    init_params = params_lib.init_fn(model)
    abstract_state, state_shardings = train_state_shardings(init_params, tx, mesh, rules, config.rng_impl, trainable)
    if config.quantization.qat:
        model = qat_model(model, config.quantization.qat)
    return TrainingSetup(model, schedule, tx, init_params, abstract_state, state_shardings, config.rng_impl,
                         trainable)
