"""Faults found by trying Sora from outside (issue #20): a store that rejects a checkpoint write, checkpoints that
cannot be read for a storage reason (kept) or because they are damaged (moved aside), misspelled flags, and grain
worker processes left behind by a killed trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax
import gcs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from sora_jax import checkpoint
from sora_jax.errors import SoraError

REPO = Path(__file__).resolve().parents[1]


@flax.struct.dataclass
class State:
    """A train state's shape as Checkpointer.restore reads it (params, and something beside them)."""

    params: dict
    step: jax.Array


class Position:
    """A data iterator's position (Checkpointer saves and restores it with the state)."""

    shard_ids = (0,)

    def __init__(self, offset: int = 0):
        self.offset = offset

    def shard_states(self) -> dict:
        return {0: {"offset": self.offset}}

    def set_shard_states(self, states: dict) -> None:
        self.offset = states[0]["offset"]


def make_state(step: int) -> State:
    return State(params={"w": jnp.arange(512.0).reshape(16, 32) * step, "b": jnp.full((3,), float(step))},
                 step=jnp.array(step))


def abstract(state: State) -> State:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def save_steps(directory: Path, steps, **options) -> None:
    ckpt = checkpoint.Checkpointer(directory, keep=5, **options)
    for step in steps:
        ckpt.save(step, make_state(step), Position(step * 10))
    ckpt.close()


def damage(step_dir: Path) -> None:
    """Overwrite every file of a saved train state (as a half-written or damaged disk would)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    assert files
    for path in files:
        path.write_bytes(b"\0" * 7)


# ---------------------------------------------------------------- a store that rejects a checkpoint write

# Saves checkpoints with OCDBT into the emulator through the CLI runner, as train.py does. The emulator answers
# reads without the object generation that OCDBT's conditional manifest writes need: a write fails once one of
# orbax's concurrent array writers reads the manifest another one committed, which with this many arrays happens
# on the first save in practice (the later steps only keep the test from depending on that race).
_OCDBT_SCRIPT = """
import sys
import jax.numpy as jnp
from sora_jax.cli.common import run_cli

class Position:
    def shard_states(self):
        return {0: {"offset": 0}}

def body():
    from sora_jax import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1], keep=5, use_ocdbt=True)
    state = {"params": {f"w{i}": jnp.full((16, 64), float(i)) for i in range(100)}, "step": jnp.array(0)}
    for step in (1, 2, 3):
        ckpt.save(step, state, Position())
        ckpt.wait()
        print(f"saved {step}", flush=True)
    return 0

sys.exit(run_cli(body))
"""


def test_a_store_that_rejects_an_ocdbt_write_is_one_line_and_leaves_no_checkpoint(tmp_path):
    directory = f"gs://{gcs.BUCKET}/faults/checkpoints"
    with gcs.emulator() as url, gcs.pointed_at(url):
        # A subprocess: run_cli leaves with os._exit after a storage failure (orbax's writer threads never end).
        result = subprocess.run([sys.executable, "-c", _OCDBT_SCRIPT, directory], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, **gcs.environment(url)})
        assert result.returncode == 2, result.stderr[-3000:]
        saved = [int(line.split()[1]) for line in result.stdout.splitlines()]
        failed = len(saved) + 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [result.stderr.strip().splitlines()[-1]]
        assert errors[0].startswith(f"error: writing checkpoint step {failed} to {directory} failed (ValueError: "
                                    "Error ")
        assert "Malformed StorageGeneration" in errors[0] and "--config.checkpoint_ocdbt=false" in errors[0]
        # Orbax's threads' tracebacks, and tensorstore's into closed event loops, are left out.
        assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
        assert len(result.stderr.splitlines()) < 20, result.stderr

        # The step half-written is no checkpoint; with OCDBT off the same step is saved and restored.
        ckpt = checkpoint.Checkpointer(directory, keep=5, use_ocdbt=False)
        assert ckpt.steps() == saved
        ckpt.save(failed, make_state(failed), Position(7))
        ckpt.wait()
        assert ckpt.steps() == [*saved, failed]
        position = Position()
        restored, step = ckpt.restore(abstract(make_state(0)), position)
        ckpt.close()
    assert step == failed and position.offset == 7
    np.testing.assert_array_equal(restored.params["w"], make_state(failed).params["w"])


# ---------------------------------------------------------------- checkpoints moved aside only when damaged


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_restored(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    damage(directory / "2")
    ckpt = checkpoint.Checkpointer(directory, keep=5)
    position = Position()
    restored, step = ckpt.restore(abstract(make_state(0)), position)
    assert step == 1 and position.offset == 10
    np.testing.assert_array_equal(restored.params["w"], make_state(1).params["w"])
    assert ckpt.steps() == [1]
    (aside,) = (tmp_path / "corrupt_checkpoints").iterdir()
    assert aside.name.startswith("2-") and (aside / "state").is_dir()
    assert len(ckpt.notes) == 1 and "checkpoint step 2 could not be read" in ckpt.notes[0]
    ckpt.close()


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), TimeoutError("the bucket did not answer"),
                                   OSError(5, "Input/output error")])
def test_a_storage_failure_moves_no_checkpoint_and_is_one_line(tmp_path, monkeypatch, error):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    path_type = type(epath.Path(directory))
    read_text, read_bytes = path_type.read_text, path_type.read_bytes

    def refuse(read):
        def reader(self, *args, **kwargs):
            if f"{directory}/2/" in os.fspath(self):  # The store refuses step 2's files (root ignores chmod 000).
                raise error
            return read(self, *args, **kwargs)
        return reader

    monkeypatch.setattr(path_type, "read_text", refuse(read_text))
    monkeypatch.setattr(path_type, "read_bytes", refuse(read_bytes))
    ckpt = checkpoint.Checkpointer(directory, keep=5)
    with pytest.raises(SoraError) as raised:
        ckpt.restore(abstract(make_state(0)), Position())
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"reading checkpoint step 2 in {directory} failed ({type(error).__name__}: ")
    assert "no checkpoint was moved aside" in message
    with pytest.raises(SoraError, match="reading checkpoint step 2 .* no checkpoint was moved aside"):
        ckpt.restore_params(abstract(make_state(0)).params)  # Eval and predict do not fall back to step 1 either.
    ckpt.close()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_when_no_checkpoint_decodes_none_is_moved(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    damage(directory / "1")
    damage(directory / "2")
    ckpt = checkpoint.Checkpointer(directory, keep=5)
    with pytest.raises(SoraError) as raised:
        ckpt.restore(abstract(make_state(0)), Position())
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"no checkpoint in {directory} can be read: steps [2, 1] do not decode (step 2: ")
    assert "none was moved aside" in message
    assert ckpt.steps() == [1, 2] and not (tmp_path / "corrupt_checkpoints").exists()
    ckpt.close()


# ---------------------------------------------------------------- misspelled flags


def _train_flags(argv):
    from sora_jax.cli import train

    return train.parse_args(argv)


def _eval_flags(argv):
    from sora_jax.cli import eval as eval_cli

    return eval_cli.parse_args(argv)


def _predict_flags(argv):
    from sora_jax.cli import predict

    return predict.parse_args(argv)


def _export_flags(argv):
    from sora_jax.cli import export

    return export.main(argv)


@pytest.mark.parametrize("parse, argv, line", [
    (_train_flags, ["--wrkdir=x"], "error: unknown flag --wrkdir. Did you mean --workdir?"),
    (_train_flags, ["--config=c.py", "--dryrun"], "error: unknown flag --dryrun. Did you mean --dry_run?"),
    (_eval_flags, ["--workdir=x", "--spilt", "test"], "error: unknown flag --spilt. Did you mean --split?"),
    (_predict_flags, ["--workdir=x", "--beamsize=3"], "error: unknown flag --beamsize. Did you mean --beam_size?"),
    (_export_flags, ["--workdir=x", "--out=y", "--overwirte"],
     "error: unknown flag --overwirte. Did you mean --overwrite?"),
    (_train_flags, ["--zzzzzzzz=1"], "error: unknown flag --zzzzzzzz. See train.py --help."),
    (_eval_flags, ["--workdir=x", "stray"], "error: unexpected argument 'stray': sora-eval takes only flags (see "
                                            "sora-eval --help)."),
])
def test_an_unknown_flag_is_one_line_naming_the_closest_flag(parse, argv, line, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line] and not captured.out


def test_known_flags_and_config_overrides_still_parse():
    args, overrides = _train_flags(["--workdir=w", "--dry_run", "--config.num_train_steps=3"])
    assert args.workdir == "w" and args.dry_run and overrides == {"num_train_steps": "3"}


# ---------------------------------------------------------------- grain workers of a killed trainer

# The workers of Sora's training pipeline (pipeline.batched with num_workers=2), pulled once so they exist, then
# left waiting to hand over their next batches, as in a trainer that is busy on the device.
_WORKERS_SCRIPT = """
import sys, time
import grain, numpy as np
from sora_jax.data import pipeline
example = {"inputs": np.array([5, 6, 7], np.int32), "targets": np.array([8, 9], np.int32)}
examples = grain.MapDataset.source([example] * 64).repeat().to_iter_dataset()
it = iter(pipeline.batched(examples, batch_size=4, max_input_length=8, max_target_length=4, pack=False,
                           num_packing_bins=1, seed=0, num_workers=2))
next(it)
print("ready", flush=True)
time.sleep(600)
"""


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_grain_workers_exit_when_the_trainer_is_killed():
    # A subprocess: the trainer must be SIGKILLed (as a preempted host is), which pytest's own process cannot be.
    trainer = subprocess.Popen([sys.executable, "-c", _WORKERS_SCRIPT], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    workers: set[int] = set()
    try:
        assert trainer.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = {pid for pid in _children(trainer.pid)
                       if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()}
            time.sleep(0.1)
        assert len(workers) == 2, workers
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # Do not leave them behind when the test fails.
        os.kill(pid, signal.SIGKILL)
    assert not left, f"grain workers {left} outlived their trainer"
