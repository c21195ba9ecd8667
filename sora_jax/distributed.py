"""Multi-process start-up: one `jax.distributed.initialize` call, configured by flags or environment.

On a Cloud TPU pod slice jax finds the coordinator itself; elsewhere (GPU clusters, several CPU processes in
tests) pass the coordinator address, process count and process id, as flags or as the environment variables
SORA_COORDINATOR_ADDRESS, SORA_NUM_PROCESSES and SORA_PROCESS_ID (flags win).
"""

from __future__ import annotations

import os

import jax

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
