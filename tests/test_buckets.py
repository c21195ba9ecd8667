"""A run directory in a Cloud Storage bucket, against a real local emulator (tests/gcs.py): training killed with
SIGKILL resumes bitwise; sora-eval, sora-predict and sora-export read the bucket, and a quantized export is
written to and served from it; a bucket that does not exist is one line within seconds and no local folder named
`gs:` appears.

The emulator lacks the conditional writes (object generations) that orbax's OCDBT format needs, so these runs
write orbax's per-array zarr format (config.checkpoint_ocdbt=false); everything else is as on Cloud Storage.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gcs
import jax
import numpy as np
import pytest
from etils import epath

REPO = Path(__file__).resolve().parents[1]
RUN = f"gs://{gcs.BUCKET}/runs/tiny"


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


def test_bucket_run_killed_resumes_bitwise_then_serves_from_the_bucket(emulator, tmp_path, tfds_dir, capsys,
                                                                         monkeypatch):
    from sora_jax import checkpoint

    # Reference: the same run, uninterrupted, in a local workdir (alongside the bucket runs below).
    local = subprocess.Popen(command(str(tmp_path / "local"), tfds_dir, 8), env=env(None), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)

    # In the bucket: SIGKILL once checkpoint 4 is committed, then the same command again.
    process = subprocess.Popen(command(RUN, tfds_dir, 8), env=env(emulator), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    committed = epath.Path(RUN) / "checkpoints" / "4" / "commit_success.txt"
    deadline = time.monotonic() + 400
    while not committed.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    output = process.communicate(timeout=60)[0]
    assert committed.exists(), output[-3000:]
    resumed = subprocess.run(command(RUN, tfds_dir, 8), env=env(emulator), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint step " in resumed.stdout
    assert f"checkpoints: {RUN}/checkpoints (step 8)" in resumed.stdout
    local_output = local.communicate(timeout=600)[0]
    assert local.returncode == 0, local_output[-3000:]
    expected = checkpoint.read_as_numpy(tmp_path / "local" / "checkpoints" / "8" / "state")
    got = checkpoint.read_as_numpy(f"{RUN}/checkpoints/8/state")
    for x, y in zip(leaves(expected), leaves(got), strict=True):
        np.testing.assert_array_equal(x, y)  # Bitwise: same batches, same updates.
    events = [json.loads(line) for line in (epath.Path(RUN) / "metrics.jsonl").read_text().splitlines()]
    assert sorted({e["step"] for e in events if e["split"] == "train"}) == list(range(1, 9))
    assert (epath.Path(RUN) / "tensorboard").is_dir() and list((epath.Path(RUN) / "tensorboard").iterdir())

    # Serving reads the bucket (the command lines in this process, which the emulator fixture points at it).
    from sora_jax.cli import eval as eval_cli
    from sora_jax.cli import export as export_cli
    from sora_jax.cli import predict as predict_cli

    assert eval_cli.main([f"--workdir={RUN}", "--split=test", "--max_examples=16"]) == 0
    summary = json.loads((epath.Path(RUN) / "eval" / "test_step8" / "metrics.json").read_text())
    assert summary["step"] == 8 and summary["examples"] == 16
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("这个产品很好用\n不好\n"))
    assert predict_cli.main([f"--workdir={RUN}", "--jsonl"]) == 0
    assert [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()] == ["这个产品很好用", "不好"]
    assert export_cli.main([f"--workdir={RUN}", f"--out={tmp_path / 'hf'}"]) == 0
    from sora_jax.interop import load_hf_t5

    _, params, _ = load_hf_t5(tmp_path / "hf")
    for x, y in zip(leaves(got["params"]), leaves(params), strict=True):
        np.testing.assert_array_equal(x, y)

    # A quantized export written to the bucket serves exactly the params of quantizing the run in memory.
    int8_export = f"gs://{gcs.BUCKET}/exports/tiny-int8"
    assert export_cli.main([f"--workdir={RUN}", f"--out={int8_export}", "--quantize=int8"]) == 0
    from sora_jax.workdir import load_workdir

    served, in_memory = load_workdir(int8_export), load_workdir(RUN, quantize="int8")
    assert served.exported and served.step == in_memory.step == 8
    assert {x.dtype for x in leaves(served.params)} >= {np.dtype(np.int8)}
    for x, y in zip(leaves(served.params), leaves(in_memory.params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bucket_lost_mid_run_stops_with_one_line_and_the_run_resumes_when_it_is_back(tmp_path, tfds_dir):
    store = tmp_path / "store"  # The emulator keeps its objects here, so they survive its restart.
    store.mkdir()
    run = f"gs://{gcs.BUCKET}/runs/lost"
    out, err = tmp_path / "stdout", tmp_path / "stderr"  # Files, not pipes: a full pipe would stall the run.
    with gcs.emulator(in_memory=False, data_dir=str(store)) as url, gcs.pointed_at(url):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen(command(run, tfds_dir, 16), env=env(url), stdout=stdout, stderr=stderr)
        # Stopped between two saves: once checkpoint 4 is committed and step 10 is logged, the save of step 8 has
        # created its folder. (A bucket lost while orbax creates a step's folder is reported too, but only after
        # orbax's own 300 s coordination timeout.)
        committed = epath.Path(run) / "checkpoints" / "4" / "commit_success.txt"
        deadline = time.monotonic() + 900
        while not (committed.exists() and "step 10/16" in out.read_text()) and process.poll() is None and (
                time.monotonic() < deadline):
            time.sleep(0.2)
        assert committed.exists() and process.poll() is None, err.read_text()[-3000:]
    lost_at = time.monotonic()  # The emulator is gone: the bucket stops answering mid-run.
    process.wait(timeout=300)
    assert time.monotonic() - lost_at < 200  # Never a hang (orbax alone waits 300 s per item).
    assert process.returncode == 2, err.read_text()[-3000:]
    last = err.read_text().strip().splitlines()[-1]
    assert last.startswith("error: ") and "the storage is unreachable" in last, last
    assert "run the same command again to resume" in last, last
    assert "step 16/16" not in out.read_text()

    # The bucket is back: the last committed checkpoint reads (resuming from one is the SIGKILL test above).
    from sora_jax import checkpoint

    with gcs.emulator(in_memory=False, data_dir=str(store)) as url, gcs.pointed_at(url):
        with checkpoint.quiet_orbax():
            manager = checkpoint.Checkpointer(f"{run}/checkpoints", keep=3, use_ocdbt=False)
            try:
                steps = manager.steps()
            finally:
                manager.close()
        assert steps and steps[0] == 4, steps
        state = checkpoint.read_as_numpy(f"{run}/checkpoints/{steps[-1]}/state")
        assert int(state["step"]) == steps[-1]
        assert all(np.all(np.isfinite(x)) for x in leaves(state["params"]))
