"""Checkpoints (orbax): the train state plus each process's data-iterator state, saved asynchronously.

A restore is always made against the current run's abstract state (shapes, dtypes, target shardings), so any
mesh can read any checkpoint. A damaged newest checkpoint (its files are there but do not decode) is reported, moved
aside to `<workdir>/corrupt_checkpoints/` (so that the run can save that step again and finish) once an older one
is restored; a storage failure moves nothing. Nothing else is ever deleted here except by `keep_checkpoints`
rotation after a successful save. Paths are `etils.epath` paths: orbax writes `gs://` through tensorstore.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from sora_jax import distributed, paths
from sora_jax.errors import SoraError
from sora_jax.write_failures import checkpoint_writes

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


def check_param_shapes(item_directory: epath.Path, abstract_params: Any, key: str | None = "params") -> None:
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
        raise SoraError(f"checkpoint {epath.Path(item_directory).parent} does not match this config: "
                        f"{problems[0]}{more}. Use the model settings the workdir was trained with, or a new "
                        "--workdir.")


class Checkpointer:
    """Saves and restores {state, data iterator} under `<workdir>/checkpoints/<step>`."""

    def __init__(self, directory: paths.PathLike, *, keep: int, async_save: bool = True,
                 corrupt_dir: paths.PathLike | None = None, use_ocdbt: bool = True):
        self.directory = paths.as_path(directory)
        self.corrupt_dir = paths.as_path(corrupt_dir) if corrupt_dir else self.directory.parent / "corrupt_checkpoints"
        self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                     create=True, cleanup_tmp_directories=False)
        self._use_ocdbt = use_ocdbt
        self._manager = self._new_manager()
        self._in_flight: int | None = None  # The step of the asynchronous save not yet awaited.
        self.notes: list[str] = []  # What a restore did that the user should hear about (printed by the caller).

    def _new_manager(self) -> ocp.CheckpointManager:
        handlers = {"state": ocp.StandardCheckpointHandler(use_ocdbt=self._use_ocdbt), "data": DataStateHandler()}
        return ocp.CheckpointManager(self.directory, options=self._options, item_handlers=handlers)

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Start an asynchronous save of `state` and the iterator position (returns before it is written).

        A write the storage rejects, of this save or of the previous one (awaited first), is a
        `paths.StorageUnreachable` line; that step is not committed, so no later run takes it for a checkpoint.
        """
        self.wait()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=DataStateSave(data_iterator))
        with self._writing(step):
            # orbax's save creates the step's folder before it returns, and waits without a bound when the bucket
            # goes away meanwhile.
            paths.while_bucket_answers(self.directory, lambda: self._manager.save(step, args=args, force=True))
        self._in_flight = step

    def _writing(self, step: int) -> contextlib.AbstractContextManager[None]:
        return checkpoint_writes(f"writing checkpoint step {step} to {self.directory}", use_ocdbt=self._use_ocdbt)

    def restore(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """Restore the newest readable checkpoint into `abstract_state`'s shardings; None if there is none.

        `data_iterator` is moved to the saved position in place. A checkpoint whose shapes disagree with the
        current config is an error (it would be a different model). One whose files are there but do not decode is
        damaged: the previous one is tried, and once one is restored the damaged newer ones are moved to
        `corrupt_dir` (kept for inspection; the run can then save those steps again). Nothing is moved when the
        storage fails (refused, unreachable: a SoraError) or when no checkpoint decodes (a SoraError): the
        newest readable checkpoint always stays in place.
        """
        steps = self.steps()
        damaged: list[tuple[int, str]] = []
        for step in reversed(steps):
            self._check_shapes(step, abstract_state.params)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=DataStateRestore(data_iterator),
                ))
            except SoraError:
                raise
            except Exception as e:  # noqa: BLE001 - a storage failure stops below; anything else is damage.
                damaged.append((step, self._read_failure(step, e)))
                continue
            if damaged:
                self._set_aside(damaged, step)
            return restored["state"], step
        if damaged:
            newest, why = damaged[0]
            raise SoraError(f"no checkpoint in {self.directory} can be read: steps {[s for s, _ in damaged]} do not "
                            f"decode (step {newest}: {why}); none was moved aside. Restore them from a backup, or "
                            "train from scratch in a new --workdir.")
        return None

    def _read_failure(self, step: int, error: Exception) -> str:
        """Why checkpoint `step` could not be read when its files are there and do not decode (a file missing from
        a committed checkpoint counts as damage); a SoraError when the storage itself failed (refused,
        unreachable), since the checkpoint may well be intact."""
        cause = paths.storage_cause(error)
        if cause is None or isinstance(cause, FileNotFoundError):
            cause = None
            try:  # The storage must answer for the step's files: libraries wrap its failures in plain ValueErrors.
                any((self.directory / str(step)).iterdir())
            except Exception as e:  # noqa: BLE001 - the folder listed a moment ago: any failure is the storage's.
                cause = e
        if cause is not None:
            raise SoraError(f"reading checkpoint step {step} in {self.directory} failed ({type(cause).__name__}: "
                            f"{paths.first_line(cause)}); the storage refused or did not answer, so no checkpoint was "
                            "moved aside. Check access to it (permissions, credentials, network) and run the same "
                            "command again.") from None
        return f"{type(error).__name__}: {paths.first_line(error)}"[:200]

    def _set_aside(self, damaged: list[tuple[int, str]], resumed: int) -> None:
        # Orbax refuses to save a step that exists, so a damaged step left in place would fail the run again when it
        # reaches that step: move it out of the manager's directory, keeping it for inspection.
        stamp = time.strftime("%Y%m%d-%H%M%S")

        def move() -> None:
            for step, _ in damaged:
                paths.move(self.directory / str(step), self.corrupt_dir / f"{step}-{stamp}")

        distributed.leader_then_all("corrupt checkpoints", move)
        self._manager.close()
        self._manager = self._new_manager()
        for step, why in damaged:
            self.notes.append(f"checkpoint step {step} could not be read ({why}); moved it to "
                              f"{self.corrupt_dir / f'{step}-{stamp}'} and resumed from step {resumed}.")

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Only the parameters of checkpoint `step` (default: the newest readable one, falling back to older ones
        with a note), placed on `abstract_params`' shardings: what eval and inference need, without the
        optimizer state. Nothing in the workdir is changed; a storage failure is a SoraError, not a fallback."""
        steps = self.steps()
        if not steps:
            raise SoraError(f"no checkpoint in {self.directory}: train first, or point --workdir at a trained run.")
        if step is not None and step not in steps:
            raise SoraError(f"there is no checkpoint step {step} in {self.directory}; available: {steps}.")
        for candidate in reversed(steps) if step is None else [step]:
            self._check_shapes(candidate, abstract_params)
            try:
                return restore_params_item(self.directory / str(candidate) / "state", abstract_params), candidate
            except Exception as e:  # noqa: BLE001 - reported below or replaced by an older checkpoint.
                why = self._read_failure(candidate, e)
                if step is not None:
                    raise SoraError(f"checkpoint step {step} in {self.directory} cannot be read ({why}); pick "
                                    "another --step.") from None
                self.notes.append(f"checkpoint step {candidate} could not be read ({why}); using an older one.")
        raise SoraError(f"no checkpoint in {self.directory} could be read (steps {steps}); restore them from a "
                        "backup.")

    def _check_shapes(self, step: int, abstract_params: Any) -> None:
        check_param_shapes(self.directory / str(step) / "state", abstract_params)

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed (a rejected write: see `save`)."""
        step, self._in_flight = self._in_flight, None
        if step is None:
            self._manager.wait_until_finished()
            return
        with self._writing(step):
            paths.while_bucket_answers(self.directory, self._manager.wait_until_finished)

    def close(self) -> None:
        self.wait()
        self._manager.close()


def restore_params_item(item_directory: epath.Path, abstract_params: Any, key: str | None = "params") -> Any:
    """The params of a saved item (a train state's `key` subtree, or the whole item when key is None), placed on
    `abstract_params`' shardings."""
    target = abstract_params if key is None else {key: abstract_params}
    with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(item_directory, args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    return restored if key is None else restored[key]


def read_as_numpy(item_directory: paths.PathLike) -> Any:
    """A saved pytree (e.g. `<workdir>/checkpoints/<step>/state`) as host numpy arrays, whatever devices or
    processes saved it: for inspection, tests and conversion, not for training."""
    item_directory = paths.as_path(item_directory)
    with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
        tree = reader.metadata(item_directory).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return reader.restore(item_directory, args=ocp.args.PyTreeRestore(restore_args=restore_args))


class BestCheckpoint:
    """The params of the best evaluation so far by one metric, in `<workdir>/best/`: `params_<step>/` and
    `best.json` ({"metric", "value", "step", "params"}), which names the params folder.

    Kept apart from the rotating checkpoints so `keep_checkpoints` never deletes it. Replaced without a rename
    (buckets have none): the new params folder is written first, then best.json is rewritten in one atomic write,
    then the old folder is deleted, so a reader always finds a complete set.
    """

    INFO = "best.json"

    def __init__(self, directory: paths.PathLike, metric: str, *, use_ocdbt: bool = True):
        self.directory, self.metric = paths.as_path(directory), metric
        self._use_ocdbt = use_ocdbt
        self.lower_is_better = metric.rsplit("/", 1)[-1] == "loss"  # "loss" or a mixture task's "<task>/loss".
        self.step, self.value = None, None
        info = self._info(self.directory)
        if info is not None and info.get("metric") == metric:
            self.step, self.value = info["step"], info["value"]

    @staticmethod
    def _info(directory: epath.Path) -> dict[str, Any] | None:
        text = paths.read_text_or_none(directory / BestCheckpoint.INFO)
        return None if text is None else json.loads(text)

    def improves(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if self.lower_is_better else value > self.value

    @staticmethod
    def saved(directory: paths.PathLike) -> tuple[int, epath.Path]:
        """(the step whose params `directory` (a `<workdir>/best`) holds, the params folder); a SoraError when
        there are none."""
        directory = paths.as_path(directory)
        info = BestCheckpoint._info(directory)
        if info is None:
            raise SoraError(f"no best checkpoint in {directory}: the run was trained without config.best_metric "
                            "or has not evaluated yet; pick a --step instead.")
        return int(info["step"]), directory / info["params"]

    @staticmethod
    def restore_params(directory: paths.PathLike, abstract_params: Any) -> tuple[Any, int]:
        """The params saved in `directory`, placed on `abstract_params`' shardings, and their step."""
        step, params_dir = BestCheckpoint.saved(directory)
        check_param_shapes(params_dir, abstract_params, key=None)
        return restore_params_item(params_dir, abstract_params, key=None), step

    def update(self, step: int, params: Any, metrics: dict[str, float]) -> bool:
        """Save `params` if `metrics[metric]` beats the best so far; return whether it did."""
        if self.metric not in metrics:
            raise SoraError(f"config.best_metric={self.metric!r} is not among the evaluation metrics "
                            f"({', '.join(metrics)}); pick one of them.")
        value = float(metrics[self.metric])
        if not self.improves(value):
            return False
        previous = self._info(self.directory)
        name = f"params_{step}"
        what = f"writing the best params (step {step}) to {self.directory}"
        with (checkpoint_writes(what, use_ocdbt=self._use_ocdbt), quiet_orbax(),
              ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=self._use_ocdbt)) as writer):
            writer.save(self.directory / name, args=ocp.args.StandardSave(params), force=True)  # All processes.
        info = json.dumps({"metric": self.metric, "value": value, "step": step, "params": name})

        def publish() -> None:
            paths.write_text(self.directory / self.INFO, info)
            if previous is not None and previous.get("params") not in (None, name):
                paths.remove_tree(self.directory / previous["params"])

        distributed.leader_then_all("best checkpoint", publish)
        self.step, self.value = step, value
        return True
