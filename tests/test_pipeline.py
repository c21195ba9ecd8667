"""grain input pipelines: packing, padding, truncation, resumable iterators, sharding, eval batches."""

from __future__ import annotations

import collections
import itertools
import json

import grain
import numpy as np
import pytest

from sora_jax.data import pipeline
from sora_jax.data.tokenizer import EOS_ID, PAD_ID
from sora_jax.errors import SoraError

MAX_IN, MAX_TGT = 32, 12


@pytest.fixture(scope="module")
def pairs(make_pairs) -> list[dict[str, str]]:
    return make_pairs(23)


def _expected(tokenizer, pairs, max_in=MAX_IN, max_tgt=MAX_TGT) -> dict[tuple, int]:
    """(input ids + EOS, target ids + EOS) -> example index, computed from `tokenizer.encode` directly."""
    table = {}
    for index, pair in enumerate(pairs):
        inputs, targets = tokenizer.encode([pair["inputs"], pair["targets"]])
        assert len(inputs) < max_in and len(targets) < max_tgt  # these fixtures are never truncated
        table[(tuple(inputs) + (EOS_ID,), tuple(targets) + (EOS_ID,))] = index
    assert len(table) == len(pairs)  # distinct encodings: every segment identifies one example
    return table


def _segments(tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray) -> list[tuple[int, ...]]:
    """The token ids of each segment of one row, checking the layout invariants on the way."""
    assert tokens.dtype == segment_ids.dtype == positions.dtype == np.int32
    real = segment_ids > 0
    n = int(real.sum())
    # Segments occupy a prefix; the rest is padding with token, segment and position 0.
    assert real[:n].all() and not real[n:].any()
    assert not tokens[n:].any() and not positions[n:].any()
    assert (tokens[:n] != PAD_ID).all()
    ids = segment_ids[:n]
    assert ids[0] == 1 if n else True
    assert (np.diff(ids) >= 0).all() and set(np.diff(ids)) <= {0, 1}  # 1, 1, 2, 2, 2, 3, ...
    out = []
    for s in range(1, int(ids.max()) + 1 if n else 1):
        where = np.flatnonzero(segment_ids == s)
        np.testing.assert_array_equal(positions[where], np.arange(len(where)))  # restart at 0
        out.append(tuple(int(t) for t in tokens[where]))
        assert out[-1][-1] == EOS_ID and EOS_ID not in out[-1][:-1]
    return out


def _row_examples(batch: dict[str, np.ndarray], table: dict[tuple, int]) -> list[list[int]]:
    """Example indices of each row's segments, in order."""
    rows = []
    for r in range(batch["encoder_input_tokens"].shape[0]):
        enc = _segments(batch["encoder_input_tokens"][r], batch["encoder_segment_ids"][r],
                        batch["encoder_positions"][r])
        dec = _segments(batch["decoder_target_tokens"][r], batch["decoder_segment_ids"][r],
                        batch["decoder_positions"][r])
        assert len(enc) == len(dec) >= 1
        rows.append([table[pair] for pair in zip(enc, dec, strict=True)])  # KeyError = a mixed-up segment
    return rows


def _train(pairs, tokenizer, **kwargs) -> grain.IterDataset:
    args = dict(batch_size=4, max_input_length=MAX_IN, max_target_length=MAX_TGT, pack=True,
                num_packing_bins=4, seed=7)
    return pipeline.train_dataset(grain.MapDataset.source(pairs), tokenizer, **{**args, **kwargs})


def test_packing_round_trip(pairs, tokenizer):
    table = _expected(tokenizer, pairs)
    epochs = 6
    it = iter(_train(pairs, tokenizer))
    counts: collections.Counter[int] = collections.Counter()
    per_row = []
    while sum(counts.values()) < epochs * len(pairs):
        batch = next(it)
        assert set(batch) == set(pipeline.BATCH_KEYS)
        assert batch["encoder_input_tokens"].shape == (4, MAX_IN)
        assert batch["decoder_target_tokens"].shape == (4, MAX_TGT)
        for row in _row_examples(batch, table):
            counts.update(row)
            per_row.append(len(row))
    assert max(per_row) >= 2  # rows really are packed
    assert set(counts) == set(range(len(pairs)))
    # No example is dropped or duplicated: after ~6 epochs each example appeared 6 times, give or take the
    # examples still waiting in the packing bins at the epoch boundary.
    assert all(epochs - 1 <= c <= epochs + 1 for c in counts.values()), counts
    assert sum(counts.values()) < (epochs + 1) * len(pairs)


def test_unpacked_rows_hold_one_example(pairs, tokenizer):
    table = _expected(tokenizer, pairs)
    it = iter(_train(pairs, tokenizer, pack=False, batch_size=1))
    order = []
    for _ in range(2 * len(pairs)):
        batch = next(it)
        for key in ("encoder", "decoder"):
            seg = batch[f"{key}_segment_ids"][0]
            tokens = batch["encoder_input_tokens" if key == "encoder" else "decoder_target_tokens"][0]
            np.testing.assert_array_equal(seg, (tokens != PAD_ID).astype(np.int32))
            assert set(seg.tolist()) <= {0, 1}
        (row,) = _row_examples(batch, table)
        assert len(row) == 1
        order.extend(row)
    first, second = order[:len(pairs)], order[len(pairs):]
    assert sorted(first) == sorted(second) == list(range(len(pairs)))  # each epoch is a permutation
    assert first != second  # reshuffled each epoch
    assert first != list(range(len(pairs)))  # shuffled at all


def test_same_seed_same_batches_other_seed_differs(pairs, tokenizer):
    def first(seed):
        return next(iter(_train(pairs, tokenizer, seed=seed)))

    a, b, c = first(3), first(3), first(4)
    assert all(np.array_equal(a[k], b[k]) for k in pipeline.BATCH_KEYS)
    assert not np.array_equal(a["encoder_input_tokens"], c["encoder_input_tokens"])


@pytest.mark.parametrize("pack", [True, False])
def test_truncation(tokenizer, pack):
    long_text = "我们的家好 " + " ".join(["the hotel room was clean"] * 10)
    pairs = [{"inputs": long_text, "targets": "the room was good and clean and good"}]
    inputs, targets = tokenizer.encode([pairs[0]["inputs"], pairs[0]["targets"]])
    max_in, max_tgt = 8, 4
    assert len(inputs) > max_in and len(targets) > max_tgt
    batch = next(iter(_train(pairs, tokenizer, pack=pack, batch_size=2, max_input_length=max_in,
                             max_target_length=max_tgt)))
    for row in range(2):
        np.testing.assert_array_equal(batch["encoder_input_tokens"][row], inputs[:max_in - 1] + [EOS_ID])
        np.testing.assert_array_equal(batch["decoder_target_tokens"][row], targets[:max_tgt - 1] + [EOS_ID])
        np.testing.assert_array_equal(batch["encoder_segment_ids"][row], np.ones(max_in))
        np.testing.assert_array_equal(batch["encoder_positions"][row], np.arange(max_in))
        np.testing.assert_array_equal(batch["decoder_positions"][row], np.arange(max_tgt))


def test_length_stats(tokenizer, pairs):
    lengths = [(len(i), len(t)) for i, t in
               (tokenizer.encode([p["inputs"], p["targets"]]) for p in pairs)]
    max_in = sorted(n for n, _ in lengths)[len(lengths) // 2] + 1  # the median input fits exactly with EOS
    max_tgt = 3
    stats = pipeline.length_stats(grain.MapDataset.source(pairs), tokenizer, max_in, max_tgt)
    assert stats.examples == len(pairs)
    assert stats.inputs_truncated == sum(n + 1 > max_in for n, _ in lengths)
    assert stats.targets_truncated == sum(m + 1 > max_tgt for _, m in lengths)
    assert 0 < stats.inputs_truncated < len(pairs)  # the boundary case (n + 1 == max_in) is not counted
    assert f"{stats.inputs_truncated} of {len(pairs)} sampled inputs" in stats.describe("train")
    few = pipeline.length_stats(grain.MapDataset.source(pairs), tokenizer, max_in, max_tgt, sample_size=5)
    assert few.examples == 5
    assert few.inputs_truncated == sum(n + 1 > max_in for n, _ in lengths[:5])
    assert pipeline.length_stats(grain.MapDataset.source(pairs), tokenizer, 1000, 1000).inputs_truncated == 0


def test_lengths_from_data_are_the_99th_percentile_rounded_up_to_8(tokenizer, pairs):
    inputs = np.array([len(tokenizer.encode([p["inputs"]])[0]) + 1 for p in pairs])
    targets = np.array([len(tokenizer.encode([p["targets"]])[0]) + 1 for p in pairs])
    max_in, max_tgt = pipeline.lengths_from_data(grain.MapDataset.source(pairs), tokenizer)
    assert max_in % 8 == 0 and max_tgt % 8 == 0
    # Covers 99 % of the examples, and a multiple of 8 smaller would not.
    for length, counts in ((max_in, inputs), (max_tgt, targets)):
        assert np.mean(counts <= length) >= 0.99
        assert np.percentile(counts, 99) > length - 8
    assert pipeline.lengths_from_data(grain.MapDataset.source(pairs), tokenizer, percentile=0) == (
        -(-inputs.min() // 8) * 8, -(-targets.min() // 8) * 8)


@pytest.mark.parametrize("pack", [True, False])
def test_iterator_state_resumes_exactly(tokenizer, pack, make_pairs):
    pairs = make_pairs(9, seed=5)  # 5 batches of 2 cross an epoch boundary
    dataset = _train(pairs, tokenizer, pack=pack, batch_size=2, num_packing_bins=2)
    it = iter(dataset)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    state = json.loads(json.dumps(state))  # JSON-serializable, and still usable after a round trip
    expected = [next(it) for _ in range(2)]
    resumed = iter(dataset)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert set(got) == set(want)
        for key in pipeline.BATCH_KEYS:
            assert np.array_equal(got[key], want[key]), key
    # The resumed batches are not simply the first ones again.
    assert not all(np.array_equal(first[0][k], expected[0][k]) for k in pipeline.BATCH_KEYS)


def test_process_shards_are_disjoint_and_cover(tokenizer, make_pairs):
    pairs = make_pairs(7, seed=2)
    table = _expected(tokenizer, pairs)
    seen = []
    for process in range(2):
        it = iter(_train(pairs, tokenizer, pack=False, batch_size=1, process_index=process, process_count=2))
        order = [_row_examples(next(it), table)[0][0] for _ in range(12)]
        shard = set(order)
        assert len(set(order[:len(shard)])) == len(shard)  # one epoch of the shard, without repeats
        seen.append(shard)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(7))
    assert sorted(map(len, seen)) == [3, 4]


def test_process_with_no_examples_raises(tokenizer, make_pairs):
    with pytest.raises(SoraError, match="process 2 of 3"):
        _train(make_pairs(2), tokenizer, process_index=2, process_count=3)


def test_eval_batches_two_processes(tokenizer, make_pairs):
    pairs = make_pairs(7, seed=3)
    ds = grain.MapDataset.source(pairs)
    outputs = [list(pipeline.eval_batches(ds, tokenizer, global_batch_size=4, max_input_length=MAX_IN,
                                          max_target_length=MAX_TGT, process_index=p, process_count=2))
               for p in range(2)]
    assert len(outputs[0]) == len(outputs[1]) == 2  # ceil(7 / 4) batches on every process
    for batch_index, (b0, b1) in enumerate(zip(*outputs, strict=True)):
        assert b0.inputs == b1.inputs and b0.targets == b1.targets
        start = batch_index * 4
        assert b0.inputs == [p["inputs"] for p in pairs[start:start + 4]]
        assert b0.targets == [p["targets"] for p in pairs[start:start + 4]]
        for process, batch in enumerate((b0, b1)):
            assert set(batch.arrays) == set(pipeline.BATCH_KEYS)
            assert batch.arrays["encoder_input_tokens"].shape == (2, MAX_IN)
            assert batch.arrays["decoder_target_tokens"].shape == (2, MAX_TGT)
            for row in range(2):
                example = start + process * 2 + row  # row i of the gathered batch is example j*G + i
                arrays = {k: v[row] for k, v in batch.arrays.items()}
                if example < len(pairs):
                    inputs, targets = tokenizer.encode([pairs[example]["inputs"], pairs[example]["targets"]])
                    tokens = arrays["encoder_input_tokens"]
                    np.testing.assert_array_equal(tokens[:len(inputs) + 1], inputs + [EOS_ID])
                    assert not tokens[len(inputs) + 1:].any()
                    np.testing.assert_array_equal(arrays["decoder_target_tokens"][:len(targets) + 1],
                                                  targets + [EOS_ID])
                    assert arrays["encoder_segment_ids"].sum() == len(inputs) + 1
                    assert arrays["decoder_segment_ids"].sum() == len(targets) + 1
                else:
                    assert all(not v.any() for v in arrays.values())  # padded rows are all zeros
    all_inputs = list(itertools.chain.from_iterable(b.inputs for b in outputs[0]))
    assert all_inputs == [p["inputs"] for p in pairs]


def test_eval_batches_max_examples(tokenizer, make_pairs):
    pairs = make_pairs(7, seed=3)
    batches = list(pipeline.eval_batches(grain.MapDataset.source(pairs), tokenizer, global_batch_size=4,
                                         max_input_length=MAX_IN, max_target_length=MAX_TGT, max_examples=5))
    assert [b.inputs for b in batches] == [[p["inputs"] for p in pairs[:4]], [pairs[4]["inputs"]]]
    last = batches[1].arrays
    assert last["encoder_input_tokens"].shape == (4, MAX_IN)
    assert last["encoder_segment_ids"][0].any() and not any(v[1:].any() for v in last.values())


def test_empty_split_raises():
    with pytest.raises(SoraError, match="split is empty"):
        pipeline.text_pairs([], lambda example: example)


def test_text_pairs_maps_through_preprocessor():
    source = [{"a": b"x1", "b": 0}, {"a": b"y2", "b": 1}]
    pairs = pipeline.text_pairs(source, lambda e: {"inputs": e["a"].decode(), "targets": str(e["b"])})
    assert len(pairs) == 2 and pairs[1] == {"inputs": "y2", "targets": "1"}
