"""`config.profile_steps`: a jax.profiler trace of a range of train steps, for TensorBoard's profile plugin."""

from __future__ import annotations

import os
from typing import Any

import jax
from etils import epath


class StepProfiler:
    """Starts a trace before step START+1 runs and stops it once step END has finished (steps START+1..END).

    Each traced step is wrapped in a StepTraceAnnotation, so the profile's step view can split it by step.
    A run resumed past START traces nothing. `steps` is sora_jax.config.parse_profile_steps's result.
    """

    def __init__(self, steps: tuple[int, int] | None, directory: epath.Path):
        self._steps = steps
        self.directory = directory  # Local or a bucket: the profiler's file system writes gs:// itself.
        self._active = False
        self._annotation: Any = None

    def before_step(self, step: int) -> None:
        """Call with the number of steps done so far, just before running the next one."""
        if self._steps is None:
            return
        if step == self._steps[0] and not self._active:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(os.fspath(self.directory))
            self._active = True
        if self._active:
            self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step + 1)
            self._annotation.__enter__()

    def after_step(self, step: int, outputs: Any) -> None:
        """Call with the number of steps done (the one just run included) and that step's outputs."""
        if not self._active:
            return
        self._annotation.__exit__(None, None, None)
        if step >= self._steps[1]:
            jax.block_until_ready(outputs)  # dispatch is asynchronous: the trace must hold the whole step
            self.close()

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop a trace still running (a run that ended or stopped inside the range)."""
        if self._active:
            self._active = False
            jax.profiler.stop_trace()
