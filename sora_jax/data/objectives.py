"""Pretraining objectives on token ids: T5 span corruption, prefix LM, and UL2's mixture of denoisers.

The numpy functions follow T5's semantics and are deterministic given a `np.random.Generator`:

- Span corruption of L tokens: noise = round(L * density) clipped to [1, L-1]; spans = round(noise / mean span)
  clipped to [1, min(noise, L - noise)] (T5 leaves the upper clip out; it only matters for densities above 0.5
  with mean spans below 1). Noise and non-noise tokens are each cut uniformly at random into that many positive
  parts, interleaved starting with non-noise. Inputs replace each noise span by one sentinel, targets are the
  (sentinel, span) pairs; both end with EOS. Sentinels count down from `first_sentinel_id`
  (`Tokenizer.sentinel_id(0)`, the highest id).
- Prefix LM: inputs = a prefix of the chunk, targets = the rest, split at a uniformly random point (see
  `prefix_lm`).

`denoised_examples` is the grain glue: documents -> chunks of each denoiser's raw length -> denoised examples,
several denoisers mixed by weight. Rounding is Python's (half to even), as T5's helper and `tf.round` do.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from sora_jax.errors import SoraError

SPAN = "span"
PREFIX_LM = "prefix_lm"
MIN_INPUTS_LENGTH = 8


def check_span_settings(noise_density: float, mean_noise_span_length: float) -> None:
    """Raise SoraError unless 0 < noise_density < 1 and mean_noise_span_length > 0."""
    if not 0 < noise_density < 1:
        raise SoraError(f"noise_density={noise_density} must be between 0 and 1 (T5 uses 0.15).")
    if not mean_noise_span_length > 0:
        raise SoraError(f"mean_noise_span_length={mean_noise_span_length} must be > 0 (T5 uses 3).")


def check_inputs_length(inputs_length: int, what: str = "inputs_length") -> None:
    """Raise SoraError if a denoiser has fewer than MIN_INPUTS_LENGTH input positions."""
    if inputs_length < MIN_INPUTS_LENGTH:
        raise SoraError(f"{what}={inputs_length} is too short for denoising; use at least {MIN_INPUTS_LENGTH}.")


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoising objective of a mixture: span corruption or prefix LM, its mixing weight and mode token."""

    kind: str = SPAN
    mean_noise_span_length: float = 3.0
    noise_density: float = 0.15
    weight: float = 1.0
    mode_token: str = ""  # Text such as "[NLU]"; its ids are prepended to the inputs.

    def __post_init__(self):
        if self.kind not in (SPAN, PREFIX_LM):
            raise SoraError(f"denoiser kind {self.kind!r} is unknown; use {SPAN!r} or {PREFIX_LM!r}.")
        check_span_settings(self.noise_density, self.mean_noise_span_length)
        if not self.weight > 0:
            raise SoraError(f"denoiser {self.name} has weight {self.weight}; mixing weights must be > 0.")

    @property
    def name(self) -> str:
        """A readable key, e.g. "span(3,0.15)[NLU]" or "prefix_lm[S2S]" (keys the mixture's saved state)."""
        settings = "" if self.kind == PREFIX_LM else f"({self.mean_noise_span_length:g},{self.noise_density:g})"
        return f"{self.kind}{settings}{self.mode_token}"


T5_SPAN_CORRUPTION = (Denoiser(SPAN, 3.0, 0.15),)
# UL2R's mixture (Tay et al. 2022, "Transcending scaling laws with 0.1% extra compute"), with UL2's mode tokens:
# R = regular span corruption, X = extreme, S = sequential (prefix LM). Its weights are published, unlike those
# of UL2's seven-denoiser mixture; build that one from `Denoiser`s if wanted.
UL2_DENOISERS = (
    Denoiser(SPAN, 3.0, 0.15, weight=0.25, mode_token="[NLU]"),
    Denoiser(SPAN, 32.0, 0.15, weight=0.125, mode_token="[NLG]"),
    Denoiser(SPAN, 3.0, 0.5, weight=0.125, mode_token="[NLG]"),
    Denoiser(PREFIX_LM, weight=0.5, mode_token="[S2S]"),
)


def _span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = min(max(round(noise / mean_noise_span_length), 1), noise, length - noise)
    return noise, spans


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                            *, max_targets_length: int | None = None) -> tuple[int, int]:
    """(raw_length, targets_length): the longest raw chunk whose corrupted inputs (EOS included) fit.

    T5's `random_spans_helper`: inputs(t) = t - noise + spans + 1, targets(t) = noise + spans + 1; e.g.
    512 -> (568, 114). With `max_targets_length` the targets must fit too (this replaces T5's tweak for density
    0.5, which could let targets exceed the length it returned).
    """
    check_inputs_length(inputs_length)
    check_span_settings(noise_density, mean_noise_span_length)

    def sizes(t: int) -> tuple[int, int]:
        noise, spans = _span_counts(t, noise_density, mean_noise_span_length)
        return t - noise + spans + 1, noise + spans + 1

    def fits(t: int) -> bool:
        inputs, targets = sizes(t)
        return inputs <= inputs_length and (max_targets_length is None or targets <= max_targets_length)

    if not fits(2):
        raise SoraError(f"targets_length={max_targets_length} cannot hold even one noise span (EOS included); "
                        "use at least 3.")
    # Both sizes never decrease as t grows, so the fitting t form a range: find its end by doubling, then bisect.
    low, high = 2, 4
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, sizes(low)[1]


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    # Distinct cut points among the num_items - 1 gaps: every composition into positive parts is equally likely.
    cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


def noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
               rng: np.random.Generator) -> np.ndarray:
    """Boolean [length] mask of noise tokens: alternating non-noise/noise spans, starting with non-noise."""
    if length < 2:
        raise SoraError(f"cannot corrupt {length} token(s): span corruption needs at least 2.")
    check_span_settings(noise_density, mean_noise_span_length)
    noise, spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(noise, spans, rng)
    nonnoise_lengths = _random_segmentation(length - noise, spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    return np.repeat(np.arange(2 * spans), interleaved) % 2 == 1


def _replace_spans(tokens: np.ndarray, mask: np.ndarray, first_sentinel_id: int, eos_id: int) -> np.ndarray:
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    sentinels = first_sentinel_id - (np.cumsum(starts) - 1)
    kept = np.where(starts, sentinels, tokens)[~mask | starts]
    return np.concatenate([kept, [eos_id]]).astype(np.int32)


def span_corrupt(tokens: Sequence[int] | np.ndarray, rng: np.random.Generator, *, noise_density: float,
                 mean_noise_span_length: float, first_sentinel_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int32: noise spans -> one sentinel each in inputs; targets = (sentinel, span)...; + EOS."""
    tokens = np.asarray(tokens, np.int32)
    mask = noise_mask(len(tokens), noise_density, mean_noise_span_length, rng)
    # Targets are the same operation on the complement: each non-noise span becomes the sentinel that precedes
    # the noise span after it (the sequence starts with non-noise and ends with noise).
    return (_replace_spans(tokens, mask, first_sentinel_id, eos_id),
            _replace_spans(tokens, ~mask, first_sentinel_id, eos_id))


def prefix_lm(tokens: Sequence[int] | np.ndarray, rng: np.random.Generator, *, eos_id: int,
              max_inputs_length: int | None = None,
              max_targets_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int32: a prefix of `tokens` and the rest, each + EOS.

    The prefix length is uniform over every split that leaves both sides non-empty and fits both limits (EOS
    included): [max(1, n - max_targets_length + 1), min(n - 1, max_inputs_length - 1)]. `denoised_examples`
    cuts chunks of min(inputs, targets) length so that every split point of a chunk is possible.
    """
    tokens = np.asarray(tokens, np.int32)
    n = len(tokens)
    if n < 2:
        raise SoraError(f"cannot split {n} token(s) into a prefix and a rest: prefix LM needs at least 2.")
    low = 1 if max_targets_length is None else max(1, n - max_targets_length + 1)
    high = n - 1 if max_inputs_length is None else min(n - 1, max_inputs_length - 1)
    if low > high:
        raise SoraError(f"{n} tokens do not fit inputs of {max_inputs_length} and targets of {max_targets_length} "
                        "(EOS included); cut the text into shorter chunks.")
    split = int(rng.integers(low, high + 1))
    eos = np.asarray([eos_id], np.int32)
    return np.concatenate([tokens[:split], eos]), np.concatenate([tokens[split:], eos])


@dataclasses.dataclass(frozen=True)
class DenoiserPlan:
    """A denoiser with its lengths worked out for a pipeline's inputs and targets limits."""

    denoiser: Denoiser
    raw_length: int  # Chunk length before denoising.
    max_inputs_length: int  # Inputs limit left after the mode token.
    max_targets_length: int
    mode_ids: tuple[int, ...]
    spans: int  # Noise spans of a full chunk (0 for prefix LM).


def plan_denoisers(denoisers: Sequence[Denoiser], *, inputs_length: int, targets_length: int,
                   mode_token_ids: Mapping[str, Sequence[int]], num_sentinels: int) -> list[DenoiserPlan]:
    """Each denoiser's raw length and limits; SoraError (one line) for a mixture these lengths cannot serve.

    Span denoisers: `span_corruption_lengths` of the inputs limit minus the mode token, targets within
    `targets_length`. Prefix LM: chunks of min(inputs limit, targets_length) tokens.
    """
    if not denoisers:
        raise SoraError("the denoiser list is empty; use T5_SPAN_CORRUPTION, UL2_DENOISERS or your own.")
    names = [d.name for d in denoisers]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SoraError(f"denoiser {twice} is listed twice; list it once with the sum of the weights.")
    check_inputs_length(inputs_length)
    if targets_length < 2:
        raise SoraError(f"targets_length={targets_length} is too short for denoising; use at least 2.")
    plans = []
    for d in denoisers:
        if d.mode_token and d.mode_token not in mode_token_ids:
            raise SoraError(f"mode token {d.mode_token!r} of denoiser {d.name} has no ids in mode_token_ids; "
                            "add tokenizer.encode([token])[0] for it.")
        mode_ids = tuple(int(i) for i in mode_token_ids[d.mode_token]) if d.mode_token else ()
        budget = inputs_length - len(mode_ids)
        check_inputs_length(budget, f"inputs_length={inputs_length} minus the {len(mode_ids)} ids of {d.mode_token}")
        if d.kind == PREFIX_LM:
            plans.append(DenoiserPlan(d, min(budget, targets_length), budget, targets_length, mode_ids, 0))
            continue
        if num_sentinels <= 0:
            raise SoraError(f"span corruption ({d.name}) needs sentinel ids but the tokenizer has extra_ids=0; "
                            "load it with extra_ids=100.")
        raw, _ = span_corruption_lengths(budget, d.noise_density, d.mean_noise_span_length,
                                         max_targets_length=targets_length)
        spans = _span_counts(raw, d.noise_density, d.mean_noise_span_length)[1]
        if spans > num_sentinels:
            raise SoraError(f"denoiser {d.name} makes {spans} noise spans at inputs_length={inputs_length}, "
                            f"targets_length={targets_length} but the tokenizer has {num_sentinels} sentinels; "
                            f"use extra_ids >= {spans} or shorter lengths.")
        plans.append(DenoiserPlan(d, raw, budget, targets_length, mode_ids, spans))
    return plans


class _AsChunkInput(grain.transforms.Map):
    def map(self, doc: np.ndarray) -> dict[str, np.ndarray]:
        return {"tokens": np.asarray(doc, np.int32)}


class _ChunkTokens(grain.transforms.Map):
    def map(self, chunk: Mapping[str, np.ndarray]) -> np.ndarray:
        # Only the stream's last chunk is short; its tail is padding (segment id 0).
        return chunk["tokens"][chunk["tokens_segment_ids"] > 0]


class _LongEnough(grain.transforms.Filter):
    def filter(self, tokens: np.ndarray) -> bool:
        return len(tokens) >= 2


class _Denoise(grain.transforms.RandomMap):
    def __init__(self, plan: DenoiserPlan, first_sentinel_id: int, eos_id: int):
        self._plan, self._first_sentinel_id, self._eos_id = plan, first_sentinel_id, eos_id
        self._mode_ids = np.asarray(plan.mode_ids, np.int32)

    def random_map(self, tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        d = self._plan.denoiser
        if d.kind == SPAN:
            inputs, targets = span_corrupt(tokens, rng, noise_density=d.noise_density,
                                           mean_noise_span_length=d.mean_noise_span_length,
                                           first_sentinel_id=self._first_sentinel_id, eos_id=self._eos_id)
        else:
            inputs, targets = prefix_lm(tokens, rng, eos_id=self._eos_id,
                                        max_inputs_length=self._plan.max_inputs_length,
                                        max_targets_length=self._plan.max_targets_length)
        return {"inputs": np.concatenate([self._mode_ids, inputs]), "targets": targets}


class _AssignDenoiser(grain.transforms.RandomMap):
    def __init__(self, shares: np.ndarray):
        self._shares = shares

    def random_map(self, doc: np.ndarray, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        return int(rng.choice(len(self._shares), p=self._shares)), doc


class _AssignedTo(grain.transforms.Filter):
    def __init__(self, index: int):
        self._index = index

    def filter(self, assigned: tuple[int, np.ndarray]) -> bool:
        return assigned[0] == self._index


class _Doc(grain.transforms.Map):
    def map(self, assigned: tuple[int, np.ndarray]) -> np.ndarray:
        return assigned[1]


def _derived_seed(seed: int, name: str) -> int:
    # Keyed by name, not position, so that a component keeps its random stream when the mixture changes.
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _component(docs: grain.IterDataset, plan: DenoiserPlan, *, first_sentinel_id: int, eos_id: int,
               seed: int) -> grain.IterDataset:
    chunks = grain.experimental.ConcatThenSplitIterDataset(docs.map(_AsChunkInput()),
                                                           length_struct={"tokens": plan.raw_length})
    return (chunks.map(_ChunkTokens()).filter(_LongEnough())
            .random_map(_Denoise(plan, first_sentinel_id, eos_id), seed=_derived_seed(seed, plan.denoiser.name)))


def denoised_examples(token_docs: grain.IterDataset, denoisers: Sequence[Denoiser], *, inputs_length: int,
                      targets_length: int, first_sentinel_id: int, eos_id: int,
                      mode_token_ids: Mapping[str, Sequence[int]], seed: int,
                      num_sentinels: int) -> grain.IterDataset:
    """{"inputs", "targets"} int32 examples (EOS included, within the limits) made from documents of token ids.

    `token_docs` yields int32 arrays without EOS (shuffle and repeat it before, for training). Each denoiser
    concatenates the documents it gets and cuts them into chunks of its raw length (grain's
    ConcatThenSplitIterDataset: T5's reduce_concat + split), then denoises each chunk with a grain random map
    (its rng comes from `seed`, the denoiser's name and the element's index, so get_state()/set_state() resume
    exactly). Several denoisers: every document goes to one denoiser, drawn with probability proportional to
    weight x raw length, so that all components move through the documents at the same pace and no document is
    used twice; the components are then interleaved by weight with grain's IterDataset.mix (keyed by denoiser
    name). Each component reads all of `token_docs` and keeps its own documents, so upstream work runs once per
    denoiser. The mixture ends when one component runs out. `first_sentinel_id` = tokenizer.sentinel_id(0),
    `num_sentinels` = tokenizer.extra_ids; `mode_token_ids` maps each mode token text to its ids. Under
    mp_prefetch grain mixes the worker index into the rngs: keep the worker count fixed across a resume.
    """
    plans = plan_denoisers(denoisers, inputs_length=inputs_length, targets_length=targets_length,
                           mode_token_ids=mode_token_ids, num_sentinels=num_sentinels)
    options = dict(first_sentinel_id=first_sentinel_id, eos_id=eos_id, seed=seed)
    if len(plans) == 1:
        return _component(token_docs, plans[0], **options)
    shares = np.asarray([p.denoiser.weight * p.raw_length for p in plans], np.float64)
    assigned = token_docs.random_map(_AssignDenoiser(shares / shares.sum()), seed=_derived_seed(seed, "assign"))
    components = {p.denoiser.name: _component(assigned.filter(_AssignedTo(i)).map(_Doc()), p, **options)
                  for i, p in enumerate(plans)}
    mixed = grain.IterDataset.mix(components, {p.denoiser.name: p.denoiser.weight for p in plans})
    # Each component skips the other components' documents by design; grain would warn about it every minute.
    return grain.experimental.WithOptionsIterDataset(
        mixed, grain.experimental.DatasetOptions(filter_warn_threshold_ratio=None))
