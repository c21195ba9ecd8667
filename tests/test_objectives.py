"""Pretraining objectives: T5's length helper and span corruption, prefix LM, and the grain mixture pipeline."""

from __future__ import annotations

import collections
import itertools

import grain
import numpy as np
import pytest

from sora_jax.data import objectives as obj
from sora_jax.data.objectives import Denoiser
from sora_jax.errors import SoraError

EOS = 1
PIECES = 100_000  # Document tokens are in [3, PIECES); sentinels are PIECES..PIECES+99, <extra_id_0> the highest.
FIRST_SENTINEL = PIECES + 99
NO_THREADS = grain.ReadOptions(num_threads=0)  # Reading in-line: prefetch threads only slow the 2 CPU cores down.
MODES = {"[NLU]": [5], "[NLG]": [6], "[S2S]": [7, 8]}  # Document tokens below are >= 10, so these never collide.


def is_sentinel(t: int) -> bool:
    return t >= PIECES


def undo(inputs: np.ndarray, targets: np.ndarray) -> list[int]:
    """The original tokens: each sentinel of the inputs replaced by its span in the targets."""
    assert inputs[-1] == EOS and targets[-1] == EOS and EOS not in inputs[:-1] and EOS not in targets[:-1]
    spans, current = {}, None
    for t in targets[:-1].tolist():
        if is_sentinel(t):
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    in_sentinels = [t for t in inputs.tolist() if is_sentinel(t)]
    # Sentinels count down from <extra_id_0>, in the same order on both sides, each span non-empty.
    assert in_sentinels == list(spans) == list(range(FIRST_SENTINEL, FIRST_SENTINEL - len(spans), -1))
    assert all(spans.values())
    out = []
    for t in inputs[:-1].tolist():
        out.extend(spans[t] if is_sentinel(t) else [t])
    return out


def counts(length: int, density: float, mean: float) -> tuple[int, int]:
    noise = min(max(round(length * density), 1), length - 1)
    return noise, min(max(round(noise / mean), 1), noise, length - noise)


# ---------------------------------------------------------------- the raw length helper


def t5_random_spans_helper(inputs_length: int, density: float, mean: float,
                           at_least_one_span: bool = False) -> tuple[int, int]:
    """T5's own loop (without its density-0.5 tweak): grow t while the next corrupted inputs still fit.

    T5's helper counts round(noise / mean) spans, 0 when noise < mean / 2, but T5's noise mask makes at least
    one span, so there its inputs overflow by one; `at_least_one_span` counts as the mask does.
    """
    def lengths(t):
        noise = int(round(t * density))
        spans = int(round(noise / mean))
        spans = max(spans, 1) if at_least_one_span else spans
        return t - noise + spans + 1, noise + spans + 1

    t = inputs_length - 1
    while lengths(t + 1)[0] <= inputs_length:
        t += 1
    return t, lengths(t)[1]


def test_helper_check_values():
    assert obj.span_corruption_lengths(512) == (568, 114)
    assert obj.span_corruption_lengths(1024) == (1137, 229)
    assert obj.span_corruption_lengths(2048) == (2274, 456)


def test_helper_golden_table_against_t5_loop():
    table = {n: obj.span_corruption_lengths(n) for n in range(64, 2049)}
    assert table == {n: t5_random_spans_helper(n, 0.15, 3.0) for n in range(64, 2049)}
    for density, mean in [(0.15, 8.0), (0.5, 3.0), (0.5, 8.0), (0.15, 64.0), (0.5, 64.0), (0.15, 32.0)]:
        for n in range(64, 2049, 31):
            assert obj.span_corruption_lengths(n, density, mean) == t5_random_spans_helper(n, density, mean, True)
    # Where T5's helper and its mask disagree (64 tokens, mean span 64: 0 spans counted, 1 made), Sora's chunk
    # is one token shorter so that the corrupted inputs really fit.
    assert t5_random_spans_helper(64, 0.15, 64.0) == (74, 12)
    assert obj.span_corruption_lengths(64, 0.15, 64.0) == (73, 13)


@pytest.mark.parametrize(("inputs_length", "targets_length", "density", "mean"),
                         [(512, 114, 0.15, 3.0), (512, 114, 0.5, 3.0), (128, 64, 0.5, 8.0), (64, 20, 0.15, 3.0),
                          (512, 512, 0.5, 3.0), (8, 3, 0.15, 3.0)])
def test_helper_with_targets_limit_is_the_largest_fitting_length(inputs_length, targets_length, density, mean):
    def fits(t):
        noise, spans = counts(t, density, mean)
        return t - noise + spans + 1 <= inputs_length and noise + spans + 1 <= targets_length

    best = max(t for t in range(2, 4 * inputs_length) if fits(t))
    noise, spans = counts(best, density, mean)
    assert obj.span_corruption_lengths(inputs_length, density, mean, max_targets_length=targets_length) == (
        best, noise + spans + 1)


# ---------------------------------------------------------------- noise mask and span corruption


@pytest.mark.parametrize(("length", "density", "mean"),
                         [(568, 0.15, 3.0), (100, 0.5, 8.0), (7, 0.15, 3.0), (2, 0.15, 3.0), (300, 0.15, 64.0),
                          (50, 0.9, 0.5)])
def test_noise_mask_counts_follow_the_formulas(length, density, mean):
    for seed in range(5):
        mask = obj.noise_mask(length, density, mean, np.random.default_rng(seed))
        noise, spans = counts(length, density, mean)
        assert mask.shape == (length,) and mask.dtype == bool
        assert mask.sum() == noise
        assert not mask[0] and mask[-1]  # starts with non-noise, ends with noise
        assert np.sum(mask[1:] & ~mask[:-1]) == spans


def test_noise_mask_segmentation_is_uniform():
    # 10 tokens, density 0.3, mean 1.5: 3 noise tokens in 2 spans (2 ways), 7 others in 2 parts (6 ways).
    seen = collections.Counter()
    rng = np.random.default_rng(0)
    draws = 6000
    for _ in range(draws):
        mask = obj.noise_mask(10, 0.3, 1.5, rng)
        seen[tuple(len(list(g)) for _, g in itertools.groupby(mask))] += 1
    assert len(seen) == 12
    assert all(abs(n / draws - 1 / 12) < 0.015 for n in seen.values()), seen


@pytest.mark.parametrize(("length", "density", "mean"),
                         [(568, 0.15, 3.0), (1137, 0.15, 3.0), (94, 0.5, 3.0), (300, 0.15, 32.0), (2, 0.15, 3.0),
                          (33, 0.5, 64.0)])
def test_span_corrupt_reconstructs_and_has_the_helper_lengths(length, density, mean):
    tokens = np.random.default_rng(length).integers(10, PIECES, length).astype(np.int32)
    noise, spans = counts(length, density, mean)
    for seed in range(4):
        inputs, targets = obj.span_corrupt(tokens, np.random.default_rng(seed), noise_density=density,
                                           mean_noise_span_length=mean, first_sentinel_id=FIRST_SENTINEL, eos_id=EOS)
        assert inputs.dtype == targets.dtype == np.int32
        assert undo(inputs, targets) == tokens.tolist()
        assert len(inputs) == length - noise + spans + 1 and len(targets) == noise + spans + 1


def test_t5_lengths_exactly():
    tokens = np.arange(10, 10 + 568, dtype=np.int32)
    inputs, targets = obj.span_corrupt(tokens, np.random.default_rng(3), noise_density=0.15,
                                       mean_noise_span_length=3.0, first_sentinel_id=FIRST_SENTINEL, eos_id=EOS)
    assert (len(inputs), len(targets)) == (512, 114)
    assert targets[0] == FIRST_SENTINEL and sum(map(is_sentinel, targets)) == 28


def test_same_seed_same_output_other_seed_other_output():
    tokens = np.arange(10, 300, dtype=np.int32)

    def corrupt(seed):
        return obj.span_corrupt(tokens, np.random.default_rng(seed), noise_density=0.15, mean_noise_span_length=3.0,
                                first_sentinel_id=FIRST_SENTINEL, eos_id=EOS)

    a, b, c = corrupt(1), corrupt(1), corrupt(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------- prefix LM


def test_prefix_lm_splits_uniformly_within_the_limits():
    tokens = np.arange(10, 30, dtype=np.int32)  # 20 tokens
    rng = np.random.default_rng(0)
    splits = collections.Counter()
    for _ in range(3000):
        inputs, targets = obj.prefix_lm(tokens, rng, eos_id=EOS, max_inputs_length=16, max_targets_length=9)
        assert inputs[-1] == targets[-1] == EOS and len(inputs) <= 16 and len(targets) <= 9
        assert np.concatenate([inputs[:-1], targets[:-1]]).tolist() == tokens.tolist()
        splits[len(inputs) - 1] += 1
    assert sorted(splits) == list(range(12, 16))  # [20 - 9 + 1, 16 - 1]
    assert all(abs(n / 3000 - 0.25) < 0.04 for n in splits.values())
    unlimited = {len(obj.prefix_lm(tokens, rng, eos_id=EOS)[0]) - 1 for _ in range(2000)}
    assert unlimited == set(range(1, 20))


def test_prefix_lm_refuses_what_cannot_fit():
    with pytest.raises(SoraError, match="20 tokens do not fit inputs of 10 and targets of 10"):
        obj.prefix_lm(np.arange(20), np.random.default_rng(0), eos_id=EOS, max_inputs_length=10,
                      max_targets_length=10)
    with pytest.raises(SoraError, match="prefix LM needs at least 2"):
        obj.prefix_lm([5], np.random.default_rng(0), eos_id=EOS)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Denoiser("mlm"), "kind 'mlm' is unknown"),
    (lambda: Denoiser(noise_density=0.0), "noise_density=0.0 must be between 0 and 1"),
    (lambda: Denoiser(noise_density=1.0), "noise_density=1.0 must be between 0 and 1"),
    (lambda: Denoiser(mean_noise_span_length=0), "mean_noise_span_length=0 must be > 0"),
    (lambda: Denoiser(weight=0), r"span\(3,0.15\) has weight 0"),
    (lambda: obj.span_corruption_lengths(7), "inputs_length=7 is too short"),
    (lambda: obj.span_corruption_lengths(64, 0.15, 3.0, max_targets_length=2), "cannot hold even one noise span"),
    (lambda: obj.noise_mask(1, 0.15, 3.0, np.random.default_rng(0)), "needs at least 2"),
    (lambda: obj.plan_denoisers(obj.T5_SPAN_CORRUPTION, inputs_length=64, targets_length=32, mode_token_ids={},
                                num_sentinels=0), "tokenizer has extra_ids=0; load it with extra_ids=100"),
    (lambda: obj.plan_denoisers(obj.UL2_DENOISERS, inputs_length=512, targets_length=512, mode_token_ids=MODES,
                                num_sentinels=100),
     r"span\(3,0.5\)\[NLG\] makes 127 noise spans .* 100 sentinels; use extra_ids >= 127"),
    (lambda: obj.plan_denoisers(obj.UL2_DENOISERS, inputs_length=64, targets_length=32, mode_token_ids={},
                                num_sentinels=100), r"mode token '\[NLU\]' .* has no ids"),
    (lambda: obj.plan_denoisers([Denoiser(mode_token="[NLU]")], inputs_length=12, targets_length=32,
                                mode_token_ids={"[NLU]": [5] * 6}, num_sentinels=100),
     r"inputs_length=12 minus the 6 ids of \[NLU\]=6 is too short"),
    (lambda: obj.plan_denoisers([Denoiser(), Denoiser(weight=2)], inputs_length=64, targets_length=32,
                                mode_token_ids={}, num_sentinels=100), r"span\(3,0.15\) is listed twice"),
    (lambda: obj.plan_denoisers([], inputs_length=64, targets_length=32, mode_token_ids={}, num_sentinels=100),
     "denoiser list is empty"),
])
def test_bad_settings_raise_one_line(make, message):
    with pytest.raises(SoraError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_prefix_lm_needs_no_sentinels():
    (plan,) = obj.plan_denoisers([Denoiser(obj.PREFIX_LM, mode_token="[S2S]")], inputs_length=64, targets_length=32,
                                 mode_token_ids=MODES, num_sentinels=0)
    assert (plan.raw_length, plan.max_inputs_length, plan.mode_ids) == (32, 62, (7, 8))


# ---------------------------------------------------------------- grain pipeline


def make_docs(n: int, seed: int = 0) -> tuple[grain.IterDataset, list[np.ndarray]]:
    """`n` documents of 1..40 tokens; every token in the whole corpus is distinct and in [10, PIECES)."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 41, n))])
    values = rng.permutation(np.arange(10, PIECES))[: offsets[-1]].astype(np.int32)
    docs = [values[a:b] for a, b in itertools.pairwise(offsets)]
    return grain.MapDataset.source(docs).to_iter_dataset(NO_THREADS), docs


def pipeline(docs, denoisers, seed=0, inputs_length=64, targets_length=32):
    return obj.denoised_examples(docs, denoisers, inputs_length=inputs_length, targets_length=targets_length,
                                 first_sentinel_id=FIRST_SENTINEL, eos_id=EOS, mode_token_ids=MODES, seed=seed,
                                 num_sentinels=100)


def strip_mode(inputs: np.ndarray) -> tuple[str, np.ndarray]:
    for mode, ids in MODES.items():
        if inputs[: len(ids)].tolist() == ids:
            return mode, inputs[len(ids):]
    return "", inputs


def test_t5_pipeline_is_the_document_stream_corrupted():
    docs, doc_list = make_docs(n=30)
    examples = list(pipeline(docs, obj.T5_SPAN_CORRUPTION))
    raw, targets_length = obj.span_corruption_lengths(64, max_targets_length=32)
    assert all(len(e["inputs"]) <= 64 and len(e["targets"]) <= 32 for e in examples)
    chunks = [undo(e["inputs"], e["targets"]) for e in examples]
    # Concatenated documents cut into raw-length chunks (the last one shorter), in order, nothing lost.
    assert [len(c) for c in chunks[:-1]] == [raw] * (len(chunks) - 1)
    assert sum(chunks, []) == np.concatenate(doc_list).tolist()
    full = [e for e, c in zip(examples, chunks, strict=True) if len(c) == raw]
    assert {len(e["targets"]) for e in full} == {targets_length} and {len(e["inputs"]) for e in full} == {64}


def test_ul2_pipeline_uses_each_document_once_and_follows_the_weights():
    docs, doc_list = make_docs(n=400)
    examples = list(pipeline(docs, obj.UL2_DENOISERS))  # until the first component runs out of documents
    corpus = np.concatenate(doc_list).tolist()
    position = {t: i for i, t in enumerate(corpus)}
    used, modes = [], collections.Counter()
    for e in examples:
        assert len(e["inputs"]) <= 64 and len(e["targets"]) <= 32
        mode, inputs = strip_mode(e["inputs"])
        modes[mode] += 1
        if mode == "[S2S]":
            assert not any(map(is_sentinel, e["inputs"])) and not any(map(is_sentinel, e["targets"]))
            chunk = inputs[:-1].tolist() + e["targets"][:-1].tolist()
        else:
            assert mode in ("[NLU]", "[NLG]") and e["targets"][0] == FIRST_SENTINEL
            chunk = undo(inputs, e["targets"])
        # A chunk is documents of one component, in corpus order.
        assert np.all(np.diff([position[t] for t in chunk]) > 0)
        used += chunk
    assert len(used) == len(set(used))  # no token, hence no document, went to two denoisers
    # Documents go to denoisers by weight x chunk length, so all components run out at about the same time.
    assert len(used) > 0.9 * len(corpus)
    quarter = len(examples) / 4  # weights 0.25, 0.125 + 0.125, 0.5: grain interleaves them exactly
    assert abs(modes["[NLU]"] - quarter) <= 1 and abs(modes["[NLG]"] - quarter) <= 1
    assert abs(modes["[S2S]"] - 2 * quarter) <= 1 and sum(modes.values()) == len(examples) > 100


def test_ul2_pipeline_mixture_proportions_over_many_examples():
    rng = np.random.default_rng(1)
    docs = grain.MapDataset.source([rng.integers(10, PIECES, int(n)).astype(np.int32)
                                    for n in rng.integers(1, 200, 64)]).repeat().to_iter_dataset(NO_THREADS)
    denoisers = [Denoiser(obj.SPAN, 3.0, 0.15, weight=0.7, mode_token="[NLU]"),
                 Denoiser(obj.PREFIX_LM, weight=0.3, mode_token="[S2S]")]
    modes = collections.Counter(strip_mode(e["inputs"])[0] for e in itertools.islice(pipeline(docs, denoisers), 1000))
    assert abs(modes["[NLU]"] / 1000 - 0.7) < 0.02 and abs(modes["[S2S]"] / 1000 - 0.3) < 0.02


@pytest.mark.parametrize("denoisers", [obj.T5_SPAN_CORRUPTION, obj.UL2_DENOISERS])
def test_resume_from_saved_state_is_exact(denoisers):
    def fresh():
        rng = np.random.default_rng(2)
        source = [rng.integers(10, PIECES, int(n)).astype(np.int32) for n in rng.integers(1, 150, 40)]
        docs = grain.MapDataset.source(source).shuffle(seed=3).repeat().to_iter_dataset(NO_THREADS)
        return iter(pipeline(docs, denoisers))

    whole = [next(it) for it in [fresh()] for _ in range(90)]
    first = fresh()
    for _ in range(37):
        next(first)
    state = first.get_state()
    resumed = fresh()
    resumed.set_state(state)
    rest = [next(resumed) for _ in range(53)]
    for a, b in zip(whole[37:], rest, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_pipeline_seed_changes_the_noise_not_the_text():
    docs, _ = make_docs(n=20)
    a, b, c = (list(pipeline(docs, obj.T5_SPAN_CORRUPTION, seed=s)) for s in (0, 0, 1))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c, strict=True))
    assert [undo(x["inputs"], x["targets"]) for x in a] == [undo(x["inputs"], x["targets"]) for x in c]


def test_pipeline_output_packs_with_grain():
    docs, _ = make_docs(n=40)
    packed = grain.experimental.FirstFitPackIterDataset(
        pipeline(docs, obj.UL2_DENOISERS), length_struct={"inputs": 64, "targets": 32}, num_packing_bins=4)
    rows = list(itertools.islice(packed, 10))
    assert rows and all(r["inputs"].shape == (64,) and r["targets"].shape == (32,) for r in rows)
    assert all(r["inputs_segment_ids"].max() >= 1 for r in rows)
