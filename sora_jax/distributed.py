"""Multi-process start-up: one `jax.distributed.initialize` call, configured by flags or environment.

On a Cloud TPU pod slice jax finds the coordinator itself; elsewhere (GPU clusters, several CPU processes in
tests) pass the coordinator address, process count and process id, as flags or as the environment variables
SORA_COORDINATOR_ADDRESS, SORA_NUM_PROCESSES and SORA_PROCESS_ID (flags win).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from sora_jax.errors import SoraError

ENV_PREFIX = "SORA_"


def _on_multihost_tpu() -> bool:
    # Cloud TPU VMs list every worker of the slice; more than one means a multi-host slice.
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start jax's distributed runtime when this is one of several processes; return whether it did."""
    coordinator_address = coordinator_address or os.environ.get(f"{ENV_PREFIX}COORDINATOR_ADDRESS")
    if num_processes is None and f"{ENV_PREFIX}NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ[f"{ENV_PREFIX}NUM_PROCESSES"])
    if process_id is None and f"{ENV_PREFIX}PROCESS_ID" in os.environ:
        process_id = int(os.environ[f"{ENV_PREFIX}PROCESS_ID"])
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise SoraError("multi-process runs need all of --coordinator_address, --num_processes and "
                            "--process_id (or SORA_COORDINATOR_ADDRESS, SORA_NUM_PROCESSES, SORA_PROCESS_ID).")
        if not 0 <= process_id < num_processes:
            raise SoraError(f"--process_id={process_id} must be in [0, {num_processes}).")
        if num_processes == 1:
            return False
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if _on_multihost_tpu():
        jax.distributed.initialize()  # Cloud TPU: the coordinator and ids come from the TPU metadata.
        return True
    return False


def process_count() -> int:
    """How many processes run this job."""
    return jax.process_count()


def is_leader() -> bool:
    """Whether this is process 0, the one that writes shared artifacts (config, tokenizer, best params, logs)."""
    return jax.process_index() == 0


def leader_then_all(name: str, work: Callable[[], Any]) -> None:
    """Process 0 runs `work`; every process waits until it is done; if it failed, every process fails.

    The one way shared artifacts (TFDS preparation on a shared data dir, the tokenizer, config.json, best/) are
    made: never two processes writing one file, never a process reading a half-written one, never a process
    left waiting at a barrier for a leader that died. A single process just runs `work`.
    """
    if jax.process_count() == 1:
        work()
        return
    failure: BaseException | None = None
    if is_leader():
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others have been told.
            failure = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(failure is not None))
    if failure is not None:
        raise failure
    if int(failed):
        raise SoraError(f"process 0 failed while making a shared artifact ({name}); its output says why.")


def all_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def broadcast_text(text: str, max_bytes: int = 64) -> str:
    """Process 0's `text` (ASCII, at most `max_bytes`), on every process."""
    if jax.process_count() == 1:
        return text
    buffer = np.zeros(max_bytes, np.uint8)
    encoded = text.encode("ascii")[:max_bytes]
    buffer[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(shared[shared > 0].astype(np.uint8)).decode("ascii")
