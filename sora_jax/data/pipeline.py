"""Input pipelines: TFDS split -> text pairs -> token ids -> packed or padded batches (grain).

Training batches come from a deterministic, checkpointable grain iterator that reads only this process's shard
of the split. Evaluation batches are finite, unshuffled and padded to full batches so that every process runs
the same number of steps (the compiled step is a collective).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from sora_jax.data import objectives, workers
from sora_jax.data.options import DataOptions
from sora_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from sora_jax.errors import SoraError

# config.data.objective -> the denoisers of an unlabelled-text task (see sora_jax/data/objectives.py).
OBJECTIVES = ("span_corruption", "prefix_lm", "ul2")

# Batch keys, as the model and the train step read them.
BATCH_KEYS = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
              "decoder_target_tokens", "decoder_segment_ids", "decoder_positions")


@dataclasses.dataclass(frozen=True)
class LengthStats:
    """How many examples of a sample of a split exceed the maximum lengths (they are truncated, not dropped)."""

    examples: int
    inputs_truncated: int
    targets_truncated: int

    def describe(self, split: str) -> str:
        return (f"{split}: {self.inputs_truncated} of {self.examples} sampled inputs and {self.targets_truncated} "
                f"targets are longer than the maximum lengths and get truncated")

    def check_targets(self, task: str, max_target_length: int) -> None:
        """Refuse a task none of whose sampled targets fit: it would only ever be trained on cut-off targets."""
        if self.examples and self.targets_truncated == self.examples:
            raise SoraError(f"task {task}: all {self.examples} sampled training targets are longer than "
                            f"config.data.max_target_length={max_target_length} (EOS included); raise it, or set it "
                            "to 0 to take it from the data.")


class TextPairs(grain.transforms.Map):
    """Raw TFDS example -> {"inputs": str, "targets": str} through the task's preprocessor."""

    def __init__(self, to_text_pair: Any):
        self._to_text_pair = to_text_pair

    def map(self, example: Mapping[str, Any]) -> dict[str, str]:
        return self._to_text_pair(example)


class TokenizePair(grain.transforms.Map):
    """Text pair -> int32 id arrays, each truncated to its maximum length and ending with EOS."""

    def __init__(self, tokenizer: Tokenizer, max_input_length: int, max_target_length: int):
        self._tokenizer = tokenizer
        self._max = {"inputs": max_input_length, "targets": max_target_length}

    def map(self, pair: Mapping[str, str]) -> dict[str, np.ndarray]:
        ids = self._tokenizer.encode([pair["inputs"], pair["targets"]])
        return {key: with_eos(row, self._max[key]) for key, row in zip(("inputs", "targets"), ids, strict=True)}


def with_eos(ids: Sequence[int], max_length: int) -> np.ndarray:
    """Ids truncated to `max_length - 1`, then EOS: what the model sees for every input and target."""
    # Truncate before appending EOS so that every sequence ends, and decoding learns where to stop.
    return np.asarray(list(ids[: max_length - 1]) + [EOS_ID], dtype=np.int32)


class TokenizeText(grain.transforms.Map):
    """{"text": str} -> int32 token ids of the document, without EOS (the objective adds it)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer

    def map(self, example: Mapping[str, str]) -> np.ndarray:
        return np.asarray(self._tokenizer.encode([example["text"]])[0], np.int32)


@dataclasses.dataclass(frozen=True)
class Objective:
    """How documents become (inputs, targets): the denoisers and the tokenizer ids they need."""

    denoisers: tuple[objectives.Denoiser, ...]
    first_sentinel_id: int
    num_sentinels: int
    mode_token_ids: dict[str, list[int]]

    def examples(self, token_docs: grain.IterDataset, *, max_input_length: int, max_target_length: int,
                 seed: int) -> grain.IterDataset:
        """{"inputs", "targets"} examples (EOS included, within the lengths) of the documents."""
        return objectives.denoised_examples(
            token_docs, self.denoisers, inputs_length=max_input_length, targets_length=max_target_length,
            first_sentinel_id=self.first_sentinel_id, eos_id=EOS_ID, mode_token_ids=self.mode_token_ids, seed=seed,
            num_sentinels=self.num_sentinels)


def make_objective(data_cfg: DataOptions, tokenizer: Tokenizer) -> Objective:
    """The objective `config.data.objective` names, for a text task, with the tokenizer's sentinels; checked
    against the lengths (one-line SoraErrors) before any data is read."""
    name = data_cfg.objective
    if name not in OBJECTIVES:
        raise SoraError(f"task {data_cfg.task} is unlabelled text: set config.data.objective to one of "
                        f"{', '.join(OBJECTIVES)} (got {name!r}).")
    if not (data_cfg.max_input_length and data_cfg.max_target_length):
        raise SoraError(f"task {data_cfg.task} is unlabelled text: set config.data.max_input_length and "
                        "max_target_length (0, 'from the data', is for tasks with inputs and targets).")
    if tokenizer.extra_ids == 0 and name != "prefix_lm":
        raise SoraError(f"config.data.objective={name} needs sentinel ids, but the tokenizer has none: set "
                        "config.tokenizer.extra_ids (T5 uses 100).")
    if name == "ul2":
        denoisers = objectives.UL2_DENOISERS
    elif name == "prefix_lm":
        denoisers = (objectives.Denoiser(objectives.PREFIX_LM),)
    else:
        denoisers = (objectives.Denoiser(objectives.SPAN, data_cfg.mean_noise_span_length, data_cfg.noise_density),)
    modes = {d.mode_token: list(tokenizer.encode([d.mode_token])[0]) for d in denoisers if d.mode_token}
    objective = Objective(denoisers, tokenizer.sentinel_id(0) if tokenizer.extra_ids else -1, tokenizer.extra_ids,
                          modes)
    objectives.plan_denoisers(denoisers, inputs_length=data_cfg.max_input_length,
                              targets_length=data_cfg.max_target_length, mode_token_ids=modes,
                              num_sentinels=tokenizer.extra_ids)
    return objective


class PadExample(grain.transforms.Map):
    """One example per row: pad to the maximum lengths and add the segment ids and positions packing would."""

    def __init__(self, max_input_length: int, max_target_length: int):
        self._max = {"inputs": max_input_length, "targets": max_target_length}

    def map(self, example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        row = {}
        for key, length in self._max.items():
            ids = example[key]
            row[key] = np.pad(ids, (0, length - len(ids)))
            row[f"{key}_segment_ids"] = (row[key] != PAD_ID).astype(np.int32)
            row[f"{key}_positions"] = np.where(row[key] != PAD_ID, np.arange(length), 0).astype(np.int32)
        return row


class ToModelBatch(grain.transforms.Map):
    """Rename grain's packing keys to the model's batch keys."""

    def map(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        renamed = {}
        for side, prefix in (("inputs", "encoder"), ("targets", "decoder")):
            tokens = "encoder_input_tokens" if side == "inputs" else "decoder_target_tokens"
            renamed[tokens] = batch[side].astype(np.int32)
            renamed[f"{prefix}_segment_ids"] = batch[f"{side}_segment_ids"].astype(np.int32)
            renamed[f"{prefix}_positions"] = batch[f"{side}_positions"].astype(np.int32)
        return renamed


def text_pairs(source: Any, to_text_pair: Any) -> grain.MapDataset:
    """A random-access dataset of text pairs over a TFDS data source."""
    if len(source) == 0:
        raise SoraError("the dataset split is empty; check the data files or the task's options.")
    return grain.MapDataset.source(source).map(TextPairs(to_text_pair))


def _sampled_lengths(pairs: grain.MapDataset, tokenizer: Tokenizer,
                     sample_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token counts (EOS included) of the inputs and targets of the first `sample_size` examples."""
    sample = [pairs[i] for i in range(min(sample_size, len(pairs)))]
    inputs = tokenizer.encode([p["inputs"] for p in sample])
    targets = tokenizer.encode([p["targets"] for p in sample])
    return np.array([len(ids) + 1 for ids in inputs]), np.array([len(ids) + 1 for ids in targets])


def length_stats(pairs: grain.MapDataset, tokenizer: Tokenizer, max_input_length: int,
                 max_target_length: int, sample_size: int = 10_000) -> LengthStats:
    """Count, over the first `sample_size` examples, how many exceed the maximum lengths (EOS included)."""
    inputs, targets = _sampled_lengths(pairs, tokenizer, sample_size)
    return LengthStats(examples=len(inputs), inputs_truncated=int(np.sum(inputs > max_input_length)),
                       targets_truncated=int(np.sum(targets > max_target_length)))


def lengths_from_data(pairs: grain.MapDataset, tokenizer: Tokenizer, *, percentile: float = 99.0,
                      multiple: int = 8, sample_size: int = 10_000) -> tuple[int, int]:
    """(max_input_length, max_target_length) that the data needs: the `percentile` of the token counts (EOS
    included) of a sample of the split, rounded up to a multiple of `multiple` (shapes that tile well)."""
    inputs, targets = _sampled_lengths(pairs, tokenizer, sample_size)

    def needed(counts: np.ndarray) -> int:
        return int(-(-np.percentile(counts, percentile) // multiple) * multiple)

    return needed(inputs), needed(targets)


def train_dataset(pairs: grain.MapDataset, tokenizer: Tokenizer, *, batch_size: int, max_input_length: int,
                  max_target_length: int, pack: bool, num_packing_bins: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  objective: Objective | None = None, num_workers: int = 0) -> grain.IterDataset:
    """Endless, shuffled (a new order each epoch), packed or padded batches of this process's shard.

    `batch_size` is this process's share of the global batch. With an `objective`, `pairs` are documents
    ({"text"}) that the objective turns into examples. Iterate it with `iter(...)`; the iterator's
    `get_state()`/`set_state()` make it resumable exactly.
    """
    examples = shard_examples(pairs, tokenizer, max_input_length=max_input_length,
                              max_target_length=max_target_length, seed=seed, process_index=process_index,
                              process_count=process_count, objective=objective)
    return batched(examples, batch_size=batch_size, max_input_length=max_input_length,
                   max_target_length=max_target_length, pack=pack, num_packing_bins=num_packing_bins, seed=seed,
                   num_workers=num_workers)


def shard_examples(pairs: grain.MapDataset, tokenizer: Tokenizer, *, max_input_length: int, max_target_length: int,
                   seed: int, process_index: int = 0, process_count: int = 1, objective: Objective | None = None,
                   what: str = "training examples", read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
    """Endless tokenized {"inputs", "targets"} examples of shard `process_index` of `process_count`, shuffled
    anew each epoch (documents through `objective` when given); `read_options` set the reading threads
    (grain's default: 16 threads, 500 examples ahead)."""
    shard = pairs[process_index::process_count]
    if len(shard) == 0:
        raise SoraError(f"process {process_index} of {process_count} got no {what}: the training "
                        "split is smaller than the number of processes.")
    shuffled = shard.shuffle(seed=seed).repeat(None)
    if objective is not None:
        return objective.examples(shuffled.map(TokenizeText(tokenizer)).to_iter_dataset(read_options),
                                  max_input_length=max_input_length, max_target_length=max_target_length,
                                  seed=seed)
    return shuffled.map(TokenizePair(tokenizer, max_input_length, max_target_length)).to_iter_dataset(read_options)


def batched(examples: grain.IterDataset, *, batch_size: int, max_input_length: int, max_target_length: int,
            pack: bool, num_packing_bins: int, seed: int, num_workers: int = 0) -> grain.IterDataset:
    """Examples -> packed (or padded) rows -> model batches of `batch_size` rows, prepared ahead: by a thread,
    or with `num_workers` > 0 by that many grain worker processes (the state stays exact either way)."""
    if pack:
        rows = grain.experimental.FirstFitPackIterDataset(
            examples,
            length_struct={"inputs": max_input_length, "targets": max_target_length},
            num_packing_bins=num_packing_bins,
            seed=seed,
            shuffle_bins=True,
        )
    else:
        rows = examples.map(PadExample(max_input_length, max_target_length))
    batches = rows.batch(batch_size, drop_remainder=True).map(ToModelBatch())
    if num_workers > 0:
        # grain reads absl flags when it starts workers; Sora parses its own command line, not absl's.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Everything above runs in the workers; the batches depend on num_workers (each reads its own slice),
        # so a run resumes with the same number.
        return batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                                   worker_init_fn=workers.exit_with_parent_init_fn())
    # A background thread prepares the next batches while the device computes (the state stays exact).
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=2)


@dataclasses.dataclass(frozen=True)
class EvalBatch:
    """A padded evaluation batch: this process's rows as arrays, and the texts of the whole global batch."""

    arrays: dict[str, np.ndarray]
    inputs: list[str]  # Texts of the global batch's real rows (the same list on every process).
    targets: list[str]


def eval_batches(pairs: grain.MapDataset, tokenizer: Tokenizer, *, global_batch_size: int,
                 max_input_length: int, max_target_length: int, max_examples: int = 0,
                 process_index: int = 0, process_count: int = 1) -> Iterator[EvalBatch]:
    """All examples (or the first `max_examples`) in order, one example per row, padded to full batches.

    Global batch j holds examples [j*G, (j+1)*G); process p tokenizes only its contiguous share of those
    rows, so every process yields the same number of batches, and row i of a gathered output is example
    j*G + i.
    """
    total = len(pairs) if max_examples <= 0 else min(max_examples, len(pairs))
    local_size = global_batch_size // process_count
    tokenize = TokenizePair(tokenizer, max_input_length, max_target_length)
    pad = PadExample(max_input_length, max_target_length)
    empty = {"inputs": np.zeros(0, np.int32), "targets": np.zeros(0, np.int32)}
    for start in range(0, total, global_batch_size):
        texts = [pairs[i] for i in range(start, min(start + global_batch_size, total))]
        mine = texts[process_index * local_size:(process_index + 1) * local_size]
        rows = [pad.map(tokenize.map(t)) for t in mine]
        rows += [pad.map(empty)] * (local_size - len(rows))
        stacked = ToModelBatch().map({k: np.stack([r[k] for r in rows]) for k in rows[0]})
        yield EvalBatch(stacked, [t["inputs"] for t in texts], [t["targets"] for t in texts])


def text_eval_batches(docs: grain.MapDataset, tokenizer: Tokenizer, objective: Objective, *, global_batch_size: int,
                      max_input_length: int, max_target_length: int, num_batches: int, process_index: int = 0,
                      process_count: int = 1) -> Iterator[EvalBatch]:
    """`num_batches` fixed batches of denoised documents of an eval split (in order, seed 0, one example per
    row), the same at every evaluation: for the teacher-forced loss of a pretraining run. Each process makes its
    rows from its own documents; every process yields the same number of batches."""
    local_size = global_batch_size // process_count
    shard = docs[process_index::process_count]
    if len(shard) == 0:
        raise SoraError(f"process {process_index} of {process_count} got no evaluation documents: the split is "
                        "smaller than the number of processes.")
    examples = objective.examples(shard.repeat(None).map(TokenizeText(tokenizer)).to_iter_dataset(),
                                  max_input_length=max_input_length, max_target_length=max_target_length, seed=0)
    rows = examples.map(PadExample(max_input_length, max_target_length)).batch(local_size).map(ToModelBatch())
    for _, arrays in zip(range(num_batches), rows, strict=False):
        yield EvalBatch(arrays, [], [])


class ShardedBatches:
    """This process's rows of each global training batch, from the data shards it owns.

    The training split is cut into `num_shards` fixed shards, each with its own grain pipeline that makes
    `global_batch_size / num_shards` rows per batch. Process p of P owns the contiguous shards
    [p*S/P, (p+1)*S/P), so row i of every global batch is the same whatever the number of processes: a run
    on 2 hosts sees exactly the batches that a run on 1 host (with the same `num_shards`) sees. Each process
    reads and tokenizes only its own shards. The position is saved per shard (`shard_states`), so a run can
    resume on another number of processes.
    """

    def __init__(self, iterators: dict[int, Any]):
        self._iterators = iterators

    @property
    def shard_ids(self) -> list[int]:
        return list(self._iterators)

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._iterators.values()]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def shard_states(self) -> dict[int, Any]:
        return {shard: it.get_state() for shard, it in self._iterators.items()}

    def set_shard_states(self, states: dict[int, Any]) -> None:
        for shard, it in self._iterators.items():
            try:
                it.set_state(states[shard])
            except (KeyError, IndexError, TypeError, ValueError) as e:
                # The state's layout follows the pipeline's: another mixture, packing or worker count.
                raise SoraError(f"the saved data position of shard {shard} does not fit this input pipeline "
                                f"({type(e).__name__}: {e}); resume with the config.data settings it was saved "
                                "with (mixture, pack, num_workers).") from e


def sharded_train_batches(pairs: grain.MapDataset, tokenizer: Tokenizer, *, global_batch_size: int,
                          num_shards: int, process_index: int, process_count: int, **options: Any) -> ShardedBatches:
    """This process's part of every global training batch (see ShardedBatches); `options` go to train_dataset."""
    return sharded_batches(
        lambda shard, rows: train_dataset(pairs, tokenizer, batch_size=rows, process_index=shard,
                                          process_count=num_shards, **options),
        global_batch_size=global_batch_size, num_shards=num_shards, process_index=process_index,
        process_count=process_count)


def sharded_batches(make_shard: Callable[[int, int], grain.IterDataset], *, global_batch_size: int, num_shards: int,
                    process_index: int, process_count: int) -> ShardedBatches:
    """ShardedBatches over this process's shards; `make_shard(shard, rows)` is the dataset of one shard, making
    `rows` rows per batch."""
    if num_shards % process_count or global_batch_size % num_shards:
        raise SoraError(f"config.data.num_shards={num_shards} must be a multiple of the {process_count} processes "
                        f"and divide batch_size={global_batch_size}.")
    per_process = num_shards // process_count
    owned = range(process_index * per_process, (process_index + 1) * per_process)
    return ShardedBatches({shard: iter(make_shard(shard, global_batch_size // num_shards)) for shard in owned})
