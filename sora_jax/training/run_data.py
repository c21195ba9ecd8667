"""The data side of a training run: one task (config.data.task) or a mixture (config.data.mixture), each with
its tokenizer, training batches and evaluator behind the same small interface that loop.run uses."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from sora_jax import distributed
from sora_jax.data import builders, mixture, pipeline, tasks
from sora_jax.data.options import DataOptions
from sora_jax.errors import SoraError
from sora_jax.evaluation.evaluator import Evaluator
from sora_jax.evaluation.mixture_evaluator import MixtureEvaluator
from sora_jax.workdir import Workdir, tokenizer_texts


def _batch_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    data = config.data
    return dict(global_batch_size=config.batch_size, num_shards=data.num_shards or jax.process_count(),
                process_index=jax.process_index(), process_count=jax.process_count(),
                max_input_length=data.max_input_length, max_target_length=data.max_target_length, pack=data.pack,
                num_packing_bins=data.num_packing_bins, seed=config.seed, num_workers=data.num_workers)


@dataclasses.dataclass
class TaskData:
    """One task: its prepared builder, training pairs, tokenizer and objective (text tasks)."""

    task: tasks.Task
    builder: Any
    train_pairs: Any
    tokenizer: Any
    objective: pipeline.Objective | None

    @property
    def label(self) -> str:
        return f"task {self.task.name}"

    @property
    def num_examples(self) -> int:
        return len(self.train_pairs)

    def describe(self, data_cfg: DataOptions) -> list[str]:
        """The truncation counts of a supervised task (refusing one none of whose targets fit), or the objective
        of a text task."""
        if self.objective is None:
            if data_cfg.objective:
                raise SoraError(f"config.data.objective={data_cfg.objective} is for unlabelled text tasks; task "
                                f"{self.task.name} has inputs and targets: clear it.")
            stats = pipeline.length_stats(self.train_pairs, self.tokenizer, data_cfg.max_input_length,
                                          data_cfg.max_target_length)
            stats.check_targets(self.task.name, data_cfg.max_target_length)
            return [stats.describe("train")]
        return [f"objective {data_cfg.objective}: {', '.join(d.name for d in self.objective.denoisers)} | inputs "
                f"{data_cfg.max_input_length} / targets {data_cfg.max_target_length} tokens | "
                f"{self.objective.num_sentinels} sentinels"]

    def train_batches(self, config: ml_collections.ConfigDict) -> pipeline.ShardedBatches:
        """This process's part of every global training batch."""
        return pipeline.sharded_train_batches(self.train_pairs, self.tokenizer, objective=self.objective,
                                              **_batch_options(config))

    def evaluator(self, model: Any, data_cfg: DataOptions, mesh: jax.sharding.Mesh, param_shardings: Any) -> Evaluator:
        return Evaluator(model, self.task, self.builder, self.tokenizer, data_cfg, mesh, param_shardings,
                         objective=self.objective)


def open_task(config: ml_collections.ConfigDict, work: Workdir, data_dir: str, options: DataOptions) -> TaskData:
    """Prepare config.data.task's data (process 0 first), train or load the tokenizer, make the objective."""
    task = tasks.from_options(options)
    task_options = options.all_task_options
    # Process 0 prepares first; then the others open it (a shared data dir is found prepared, a per-host local
    # one is prepared by each host).
    made = []
    distributed.leader_then_all("prepare data", lambda: made.append(task.make_builder(data_dir, task_options)))
    builder = made[0] if made else task.make_builder(data_dir, task_options)
    train_pairs = pipeline.text_pairs(builders.data_source(builder, "train"), task.to_text_pair)
    tokenizer = work.tokenizer(config.tokenizer, lambda: tokenizer_texts(
        train_pairs, config.tokenizer.max_training_sentences, config.seed), seed=config.seed)
    objective = pipeline.make_objective(options, tokenizer) if task.kind == "text" else None
    return TaskData(task, builder, train_pairs, tokenizer, objective)


@dataclasses.dataclass
class MixtureData:
    """The opened mixture: its components, the tokenizer they share and each text task's objective."""

    components: list[mixture.Component]
    tokenizer: Any
    objectives: dict[str, pipeline.Objective | None]

    @property
    def label(self) -> str:
        return f"mixture of {len(self.components)} tasks"

    @property
    def num_examples(self) -> int:
        return sum(len(c.train_pairs) for c in self.components)

    def describe(self, data_cfg: DataOptions) -> list[str]:
        """The mixture table, then each task's truncation (refusing a task none of whose targets fit) or objective
        line."""
        lines = [f"mixture ({data_cfg.mixture_rate} rates):", *mixture.describe(self.components)]
        for c in self.components:
            objective = self.objectives[c.name]
            if objective is None:
                stats = pipeline.length_stats(c.train_pairs, self.tokenizer, data_cfg.max_input_length,
                                              data_cfg.max_target_length)
                stats.check_targets(c.name, data_cfg.max_target_length)
                lines.append(stats.describe(f"{c.name} train"))
            else:
                lines.append(f"{c.name}: objective {data_cfg.objective} "
                             f"({', '.join(d.name for d in objective.denoisers)})")
        return lines

    def train_batches(self, config: ml_collections.ConfigDict) -> pipeline.ShardedBatches:
        """This process's part of every global batch of mixed, packed examples."""
        return mixture.sharded_train_batches(self.components, self.tokenizer, objectives=self.objectives,
                                             **_batch_options(config))

    def evaluator(self, model: Any, data_cfg: DataOptions, mesh: jax.sharding.Mesh,
                  param_shardings: Any) -> MixtureEvaluator:
        """One Evaluator per task (sharing the compiled steps), each with its task's own metrics."""
        evaluators: dict[str, Evaluator] = {}
        for c in self.components:
            first = next(iter(evaluators.values()), None)
            evaluators[c.name] = Evaluator(model, c.task, c.builder, self.tokenizer, data_cfg, mesh, param_shardings,
                                           objective=self.objectives[c.name], share_with=first)
        return MixtureEvaluator(evaluators)


def open_mixture(config: ml_collections.ConfigDict, work: Workdir, data_dir: str,
                 options: DataOptions) -> MixtureData:
    """Prepare every component, train (or load) the tokenizer on the union of their training texts, and make
    the objective of the text tasks; bad input is a one-line SoraError before anything is compiled."""
    components = mixture.open_components(options, data_dir)
    texts = [c for c in components if c.task.kind == "text"]
    if texts and not config.data.objective:
        raise SoraError(f"task {texts[0].name} in config.data.mixture is unlabelled text: set config.data.objective "
                        f"to one of {', '.join(pipeline.OBJECTIVES)}.")
    if config.data.objective and not texts:
        raise SoraError(f"config.data.objective={config.data.objective} is for unlabelled text tasks; no task of "
                        "config.data.mixture is one: clear it.")
    tokenizer = work.tokenizer(config.tokenizer, lambda: tokenizer_texts(
        mixture.union_pairs(components), config.tokenizer.max_training_sentences, config.seed), seed=config.seed)
    objective = pipeline.make_objective(options, tokenizer) if texts else None
    objectives = {c.name: objective if c.task.kind == "text" else None for c in components}
    return MixtureData(components, tokenizer, objectives)


def fill_lengths_from_data(config: ml_collections.ConfigDict, data: TaskData | MixtureData) -> str:
    """Fill in a max length configured as 0 with what the supervised training data needs (for a mixture, the
    longest any of its tasks needs); returns a note saying so, or "" when both lengths were set."""
    cfg = config.data
    if cfg.max_input_length and cfg.max_target_length:
        return ""
    # Text tasks never get here with a length of 0: their objective needs it and refused it above.
    parts = ([(data.task, data.train_pairs)] if isinstance(data, TaskData) else
             [(c.task, c.train_pairs) for c in data.components])
    # A classification run then pays for the 8 target positions its labels need, not for 64 empty ones.
    needed = [pipeline.lengths_from_data(pairs, data.tokenizer) for task, pairs in parts if task.kind != "text"]
    cfg.max_input_length = cfg.max_input_length or max(inputs for inputs, _ in needed)
    cfg.max_target_length = cfg.max_target_length or max(targets for _, targets in needed)
    return (f"lengths from the data: inputs {cfg.max_input_length} / targets {cfg.max_target_length} tokens "
            "(99th percentile of the training split, EOS included, rounded up to a multiple of 8)")


def open_data(config: ml_collections.ConfigDict, work: Workdir, data_dir: str) -> TaskData | MixtureData:
    """The run's data: config.data.mixture when set, else config.data.task."""
    options = DataOptions.from_config(config.data)
    if config.data.mixture:
        return open_mixture(config, work, data_dir, options)
    return open_task(config, work, data_dir, options)
