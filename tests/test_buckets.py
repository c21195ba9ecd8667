"""A run directory in a Cloud Storage bucket, against a real local emulator (tests/gcs.py): a bucket lost mid-run
is one line and, once it is back, the same command resumes and finishes bitwise as an uninterrupted run (a
write waiting on a bucket that stops answering gives up within seconds, not orbax's 300 s);
sora-eval, sora-predict and sora-export read the bucket, and a quantized export is written to and served from it;
a bucket that does not exist is one line within seconds and no local folder named `gs:` appears. (A run killed
with SIGKILL resumes bitwise: tests/test_training.py.)

The emulator lacks the conditional writes (object generations) that orbax's OCDBT format needs, so these runs
write orbax's per-array zarr format (config.checkpoint_ocdbt=false); everything else is as on Cloud Storage.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gcs
import jax
import numpy as np
import pytest
from etils import epath

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emulator():
    with gcs.emulator() as url, gcs.pointed_at(url):
        yield url


def command(workdir: str, tfds_dir: Path, steps: int) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'tiny.py'}",
            f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}", f"--config.num_train_steps={steps}",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=4", "--config.eval_every_steps=1000",
            "--config.optimizer.schedule=constant", "--config.data.eval_batch_size=64",
            "--config.data.max_eval_examples=64", "--config.data.max_test_examples=64",
            "--config.data.num_sample_predictions=0",
            "--config.checkpoint_ocdbt=false", "--config.tokenizer.max_training_sentences=500"]


def env(url: str | None) -> dict[str, str]:
    extra = gcs.environment(url) if url else {}
    return {**os.environ, **extra, "PYTHONUNBUFFERED": "1"}


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_missing_bucket_is_one_line_and_no_local_folder(emulator, tmp_path, tfds_dir):
    started = time.monotonic()
    result = subprocess.run(command("gs://no-such-bucket-here/runs/x", tfds_dir, 2), cwd=tmp_path, env=env(emulator),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --workdir gs://no-such-bucket-here/runs/x: the bucket gs://no-such-bucket-here "
                           "does not exist"), last
    assert time.monotonic() - started < 60
    assert not list(tmp_path.iterdir())  # Never a local folder named "gs:".


def test_a_write_waiting_on_the_bucket_gives_up_once_the_bucket_stops_answering(monkeypatch, tmp_path):
    from sora_jax import paths

    monkeypatch.setattr(paths, "BUCKET_POLL_S", 0.2)  # Seconds here; the run's defaults are 5 s and 30 s.
    monkeypatch.setattr(paths, "BUCKET_CHECK_TIMEOUT_S", 3.0)
    never = threading.Event()

    def stuck() -> None:  # As orbax's save waits on a folder that the lost bucket never creates (300 s).
        never.wait(30)

    def failing() -> None:
        raise ValueError("the writer's own error")

    assert paths.while_bucket_answers(tmp_path, lambda: "local, called directly") == "local, called directly"
    with contextlib.ExitStack() as running:
        url = running.enter_context(gcs.emulator())
        with gcs.pointed_at(url):
            assert paths.while_bucket_answers(f"gs://{gcs.BUCKET}/x", lambda: 7) == 7
            with pytest.raises(ValueError, match="the writer's own error"):
                paths.while_bucket_answers(f"gs://{gcs.BUCKET}/x", failing)
            running.close()  # The bucket stops answering.
            started = time.monotonic()
            with pytest.raises(OSError):
                paths.while_bucket_answers(f"gs://{gcs.BUCKET}/x", stuck)
            assert time.monotonic() - started < 3.0 + 5.0
    never.set()


def test_bucket_lost_mid_run_is_one_line_then_the_same_command_finishes_bitwise_and_serves_from_it(
        tmp_path, tfds_dir, capsys, monkeypatch):
    from sora_jax import checkpoint

    # Reference: the same run, uninterrupted, in a local workdir (alongside the bucket runs below).
    local_log = tmp_path / "local.log"
    with open(local_log, "w") as log:  # Files, not pipes: a full pipe would stall a run.
        local = subprocess.Popen(command(str(tmp_path / "local"), tfds_dir, 16), env=env(None), stdout=log,
                                 stderr=subprocess.STDOUT)

    # The bucket stops answering (its emulator exits) once checkpoint 4 is committed, wherever the run is then:
    # between steps, in a save, or waiting for one.
    store = tmp_path / "store"  # The emulator keeps its objects here, so they survive its restart.
    store.mkdir()
    run = f"gs://{gcs.BUCKET}/runs/lost"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with gcs.emulator(in_memory=False, data_dir=str(store)) as url, gcs.pointed_at(url):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen(command(run, tfds_dir, 16), env=env(url), stdout=stdout, stderr=stderr)
        committed = epath.Path(run) / "checkpoints" / "4" / "commit_success.txt"
        deadline = time.monotonic() + 600
        while not committed.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed.exists() and process.poll() is None, err.read_text()[-3000:]
    lost_at = time.monotonic()
    process.wait(timeout=300)
    assert time.monotonic() - lost_at < 200  # Never a hang (orbax alone waits 300 s per item).
    assert process.returncode == 2, err.read_text()[-3000:]
    last = err.read_text().strip().splitlines()[-1]
    assert last.startswith("error: ") and "the storage is unreachable" in last, last
    assert "run the same command again to resume" in last, last
    assert "step 16/16" not in out.read_text()

    # The bucket is back: the same command resumes from the last committed checkpoint, finishes, and its params
    # are bitwise those of the uninterrupted run (same batches, same updates).
    with gcs.emulator(in_memory=False, data_dir=str(store)) as url, gcs.pointed_at(url):
        resumed = subprocess.run(command(run, tfds_dir, 16), env=env(url), capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert int(resumed.stdout.split("resumed from checkpoint step ")[1].split()[0]) in (4, 8, 12)
        assert f"checkpoints: {run}/checkpoints (step 16)" in resumed.stdout
        assert local.wait(timeout=600) == 0, local_log.read_text()[-3000:]
        expected = checkpoint.read_as_numpy(tmp_path / "local" / "checkpoints" / "16" / "state")
        got = checkpoint.read_as_numpy(f"{run}/checkpoints/16/state")
        for x, y in zip(leaves(expected), leaves(got), strict=True):
            np.testing.assert_array_equal(x, y)
        events = [json.loads(line) for line in (epath.Path(run) / "metrics.jsonl").read_text().splitlines()]
        assert sorted({e["step"] for e in events if e["split"] == "train"}) == list(range(1, 17))
        assert (epath.Path(run) / "tensorboard").is_dir() and list((epath.Path(run) / "tensorboard").iterdir())
        serve_from_the_bucket(run, got, tmp_path, capsys, monkeypatch)


def serve_from_the_bucket(run: str, saved: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    """sora-eval, sora-predict and sora-export read the run in the bucket (through the command lines in this
    process, pointed at the emulator); a quantized export written to the bucket serves exactly the params of
    quantizing the run in memory."""
    from sora_jax.cli import eval as eval_cli
    from sora_jax.cli import export as export_cli
    from sora_jax.cli import predict as predict_cli
    from sora_jax.interop import load_hf_t5
    from sora_jax.workdir import load_workdir

    assert eval_cli.main([f"--workdir={run}", "--split=test", "--max_examples=16"]) == 0
    summary = json.loads((epath.Path(run) / "eval" / "test_step16" / "metrics.json").read_text())
    assert summary["step"] == 16 and summary["examples"] == 16
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("这个产品很好用\n不好\n"))
    assert predict_cli.main([f"--workdir={run}", "--jsonl"]) == 0
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == ["这个产品很好用", "不好"]
    assert export_cli.main([f"--workdir={run}", f"--out={tmp_path / 'hf'}"]) == 0
    _, params, _ = load_hf_t5(tmp_path / "hf")
    for x, y in zip(leaves(saved["params"]), leaves(params), strict=True):
        np.testing.assert_array_equal(x, y)

    int8_export = f"gs://{gcs.BUCKET}/exports/tiny-int8"
    assert export_cli.main([f"--workdir={run}", f"--out={int8_export}", "--quantize=int8"]) == 0
    served, in_memory = load_workdir(int8_export), load_workdir(run, quantize="int8")
    assert served.exported and served.step == in_memory.step == 16
    assert {x.dtype for x in leaves(served.params)} >= {np.dtype(np.int8)}
    for x, y in zip(leaves(served.params), leaves(in_memory.params), strict=True):
        np.testing.assert_array_equal(x, y)
