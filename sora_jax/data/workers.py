"""Grain worker processes (config.data.num_workers > 0) that leave when the trainer dies.

A trainer killed with SIGKILL (a preempted host) cannot stop its workers, and grain's workers wait on their
queues forever. Each worker therefore watches its parent: once the trainer's pid is no longer its parent (the
worker was re-parented), it exits. PR_SET_PDEATHSIG would be quicker, but Linux sends it when the *thread* that
started the child exits, and grain starts its workers from short-lived threads of its interleave.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

# How often a worker checks that its trainer is alive: the longest an orphan outlives it.
POLL_INTERVAL_S = 0.5


def exit_with_parent_init_fn() -> Callable[[int, int], None]:
    """A grain `worker_init_fn` (called with the worker index and count) that makes each worker exit when the
    process calling this (the trainer, which starts the workers) is gone."""
    return functools.partial(_watch_parent, os.getpid())


def _watch_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="sora-parent-watch", daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_INTERVAL_S)
    os._exit(0)  # Nobody is left to read this worker's batches; skip the interpreter's shutdown (queues, threads).
