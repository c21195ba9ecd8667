"""Checkpoints (orbax): the train state plus each process's data-iterator state, saved asynchronously.

A restore is always made against the current run's abstract state (shapes, dtypes, target shardings), so any
mesh can read any checkpoint. An unreadable latest checkpoint is reported and the previous one is used;
nothing is ever deleted here except by `keep_checkpoints` rotation after a successful save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sora_jax.errors import SoraError

log = logging.getLogger(__name__)


class DataStateHandler(ocp.CheckpointHandler):
    """Saves a data iterator's position as one JSON file per data shard (`shard_<k>.json`), not per process.

    Any process count that splits the same shards can then resume the position: each process reads the files
    of the shards it owns now. The iterator provides `shard_states() -> {shard: state}` and
    `set_shard_states({shard: state})` (see `sora_jax.data.pipeline.ShardedBatches`).
    """

    def save(self, directory: Any, args: DataStateSave) -> None:
        for shard, state in args.item.shard_states().items():
            (directory / f"shard_{shard}.json").write_text(json.dumps(state))

    def restore(self, directory: Any, args: DataStateRestore) -> Any:
        states = {}
        for shard in args.item.shard_ids:
            file = directory / f"shard_{shard}.json"
            if not file.exists():
                raise SoraError(f"{file} does not exist: this checkpoint was saved with other data shards; resume "
                                "with the same config.data.num_shards.")
            states[shard] = json.loads(file.read_text())
        args.item.set_shard_states(states)
        return args.item

    def metadata(self, directory: Any) -> None:
        return None

    def finalize(self, directory: Any) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    item: Any


def _path_name(path: tuple) -> str:
    # Dict keys, attribute names and sequence indices all print the same, so that a saved tree (plain dicts)
    # and the live tree (dataclasses, named tuples) can be compared.
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _shape_mismatches(saved: Any, abstract: Any) -> list[str]:
    """Human-readable differences between a checkpoint's parameter shapes and the current run's."""
    saved_flat = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(saved)}
    problems = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        name = _path_name(path)
        if name not in saved_flat:
            problems.append(f"{name} is missing from the checkpoint")
        elif tuple(saved_flat[name].shape) != tuple(leaf.shape):
            problems.append(f"{name} has shape {tuple(saved_flat[name].shape)} in the checkpoint but "
                            f"{tuple(leaf.shape)} in this config")
    return problems


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Silence orbax's absl warnings that are expected here: reading one item of a checkpoint, orbax says the
    others "could not be restored" and that the step-level metadata file is not in the item's folder."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_param_shapes(item_directory: Path, abstract_params: Any, key: str | None = "params") -> None:
    """A SoraError naming the first parameter whose saved shape differs from `abstract_params`' shape.

    `key` is where the params sit in the saved tree ("params" in a train state; None when the item is the
    params themselves, as in `<workdir>/best/params`). Reads the item's own metadata (a checkpoint manager in a
    fresh process has no handler registered yet and cannot). Unreadable metadata is left to the restore that
    follows, which reports it.
    """
    try:
        with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
            saved = reader.metadata(item_directory).item_metadata.tree
        saved_params = saved if key is None else saved[key]
    except Exception:  # noqa: BLE001 - see the docstring.
        return
    problems = _shape_mismatches(saved_params, abstract_params)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SoraError(f"checkpoint {item_directory.parent} does not match this config: {problems[0]}{more}. Use "
                        "the model settings the workdir was trained with, or a new --workdir.")


class Checkpointer:
    """Saves and restores {state, data iterator} under `<workdir>/checkpoints/<step>`."""

    def __init__(self, directory: Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True, cleanup_tmp_directories=False),
        )

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Start an asynchronous save of `state` and the iterator position (returns before it is written)."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=DataStateSave(data_iterator),
        ), force=True)

    def restore(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """Restore the newest readable checkpoint into `abstract_state`'s shardings; None if there is none.

        `data_iterator` is moved to the saved position in place. A checkpoint whose shapes disagree with the
        current config is an error (it would be a different model); one that cannot be read is skipped.
        """
        for step in reversed(self.steps()):
            self._check_shapes(step, abstract_state.params)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=DataStateRestore(data_iterator),
                ))
            except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable.
                log.warning("checkpoint %s/%d could not be read (%s: %s); trying the previous one. It is left in "
                            "place for inspection.", self.directory, step, type(e).__name__, str(e)[:200])
                continue
            return restored["state"], step
        if self.steps():
            raise SoraError(f"no checkpoint under {self.directory} could be read (steps {self.steps()}); move "
                            "the directory away to start fresh, or restore it from a backup.")
        return None

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Only the parameters of checkpoint `step` (default: the newest), placed on `abstract_params`'
        shardings: what eval and inference need, without reading the optimizer state."""
        steps = self.steps()
        if not steps:
            raise SoraError(f"no checkpoint in {self.directory}: train first, or point --workdir at a trained run.")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise SoraError(f"there is no checkpoint step {step} in {self.directory}; available: {steps}.")
        self._check_shapes(step, abstract_params)
        target = {"params": abstract_params}
        with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
            restored = reader.restore(self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
        return restored["params"], step

    def _check_shapes(self, step: int, abstract_params: Any) -> None:
        check_param_shapes(self.directory / str(step) / "state", abstract_params)

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def read_as_numpy(item_directory: Path) -> Any:
    """A saved pytree (e.g. `<workdir>/checkpoints/<step>/state`) as host numpy arrays, whatever devices or
    processes saved it: for inspection, tests and conversion, not for training."""
    with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
        tree = reader.metadata(item_directory).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return reader.restore(item_directory, args=ocp.args.PyTreeRestore(restore_args=restore_args))


class BestCheckpoint:
    """The params of the best evaluation so far by one metric, in `<workdir>/best/` (params + best.json).

    Kept apart from the rotating checkpoints so `keep_checkpoints` never deletes it; replaced atomically
    (a new copy is written beside the old one and renamed into place).
    """

    def __init__(self, directory: Path, metric: str):
        self.directory, self.metric = Path(directory).absolute(), metric
        self.lower_is_better = metric == "loss"
        info = self.directory / "best.json"
        self.step, self.value = None, None
        if info.exists():
            saved = json.loads(info.read_text())
            if saved.get("metric") == metric:
                self.step, self.value = saved["step"], saved["value"]

    def improves(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if self.lower_is_better else value > self.value

    @staticmethod
    def saved_step(directory: Path) -> int:
        """The step whose params `directory` (a `<workdir>/best`) holds; a SoraError when there are none."""
        info = Path(directory) / "best.json"
        if not info.is_file():
            raise SoraError(f"no best checkpoint in {directory}: the run was trained without config.best_metric "
                            "or has not evaluated yet; pick a --step instead.")
        return int(json.loads(info.read_text())["step"])

    @staticmethod
    def restore_params(directory: Path, abstract_params: Any) -> tuple[Any, int]:
        """The params saved in `directory`, placed on `abstract_params`' shardings, and their step."""
        step = BestCheckpoint.saved_step(directory)
        check_param_shapes(Path(directory) / "params", abstract_params, key=None)
        with quiet_orbax(), ocp.StandardCheckpointer() as reader:
            return reader.restore(Path(directory).absolute() / "params", abstract_params), step

    def update(self, step: int, params: Any, metrics: dict[str, float]) -> bool:
        """Save `params` if `metrics[metric]` beats the best so far; return whether it did."""
        if self.metric not in metrics:
            raise SoraError(f"config.best_metric={self.metric!r} is not among the evaluation metrics "
                            f"({', '.join(metrics)}); pick one of them.")
        value = float(metrics[self.metric])
        if not self.improves(value):
            return False
        staging = self.directory.with_name(f"{self.directory.name}.tmp-{step}")
        with ocp.StandardCheckpointer() as writer:
            writer.save(staging / "params", params)
        if jax.process_index() == 0:
            (staging / "best.json").write_text(json.dumps({"metric": self.metric, "value": value, "step": step}))
            if self.directory.exists():
                shutil.rmtree(self.directory)
            staging.rename(self.directory)
        self.step, self.value = step, value
        return True
