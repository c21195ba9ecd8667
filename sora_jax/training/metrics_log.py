"""Where metrics go: the console, TensorBoard event files, and `<workdir>/metrics.jsonl` (one JSON per event).

Only process 0 writes; the other processes' writers are silent, so callers need no `if process_index == 0`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from sora_jax import distributed, paths
from sora_jax.paths import storage_errors
from sora_jax.training import flops
from sora_jax.workdir import Workdir


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m05s'; 65 -> '1m05s'."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class MetricsLog:
    """Writes train and eval events to the console, TensorBoard and metrics.jsonl.

    metrics.jsonl: appended on a local disk; in a bucket (objects cannot be appended to) the whole file is
    uploaded again at each event, which is one atomic write. A last line cut short by a killed run is dropped
    before anything new is written. TensorBoard: tensorboardX writes a local folder; for a bucket workdir that
    folder is a local staging copy whose event files are uploaded to `<workdir>/tensorboard/` at each event, so
    `tensorboard --logdir gs://...` shows them.
    """

    def __init__(self, workdir: Workdir, *, enabled: bool | None = None):
        self.enabled = distributed.is_leader() if enabled is None else enabled
        self._workdir = workdir
        self._jsonl = None
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # Imported here: only the writing process needs it.

            self._lines = [json.dumps(e, ensure_ascii=False) for e in workdir.events()]
            self._staging = tempfile.mkdtemp(prefix="sora_tb_") if workdir.is_remote else None
            if not workdir.is_remote:
                paths.write_text(workdir.metrics_file, "".join(f"{line}\n" for line in self._lines))
                self._jsonl = open(workdir.metrics_file, "a", encoding="utf-8")  # noqa: SIM115
            self._tb = SummaryWriter(self._staging or os.fspath(workdir.tensorboard_dir), flush_secs=10)

    def print(self, message: str) -> None:
        """A line for people (process 0 only)."""
        if self.enabled:
            print(message, flush=True)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record one event: a JSON line, TensorBoard scalars under `<split>/<name>`."""
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, int | float) and math.isfinite(v) else None if
                     isinstance(v, float) else v) for k, v in metrics.items()}
        line = json.dumps({"step": step, "split": split, **clean}, ensure_ascii=False)
        for name, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, step)
        with storage_errors(f"writing {self._workdir.metrics_file}"):
            if self._jsonl is not None:
                self._jsonl.write(line + "\n")
                self._jsonl.flush()
            else:
                self._lines.append(line)
                paths.write_text(self._workdir.metrics_file, "".join(f"{x}\n" for x in self._lines))
                self._upload_tensorboard()

    def _upload_tensorboard(self) -> None:
        if self._staging is None:
            return
        self._tb.flush()
        for name in os.listdir(self._staging):
            paths.write_bytes(self._workdir.tensorboard_dir / name, Path(self._staging, name).read_bytes())

    def text(self, step: int, tag: str, text: str) -> None:
        """A text sample (e.g. decoded predictions) in TensorBoard and on the console."""
        if self.enabled:
            self._tb.add_text(tag, text, step)
            print(text, flush=True)

    def close(self) -> None:
        if self.enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            self._tb.close()
            with storage_errors("uploading TensorBoard events"):
                self._upload_tensorboard()


class Progress:
    """One console line per log step: step, loss, token accuracy, learning rate, throughput, ETA.

    With `flops_per_step` (sora_jax.training.flops) the line and the returned rates also carry TFLOP/s per
    device, and MFU when the device kind's peak is known.
    """

    def __init__(self, total_steps: int, start_step: int, *, flops_per_step: float | None = None,
                 num_devices: int = 1, device_kind: str = ""):
        self.total = total_steps
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._start_time = self._last_time
        self._start_step = start_step
        self._flops_per_step = flops_per_step
        self._num_devices = num_devices
        self._device_kind = device_kind

    def exclude_pause(self, seconds: float) -> None:
        """Leave time spent outside training steps (evaluation, checkpointing) out of tokens/s and ETA."""
        self._last_time += seconds
        self._start_time += seconds

    def line(self, step: int, metrics: dict[str, float], tokens: float) -> tuple[str, dict[str, float]]:
        """The progress line and the measured rates since the previous line: tokens_per_sec, and with
        flops_per_step also tflops_per_device and (for a known device kind) mfu."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = max(step - self._last_step, 1)
        rates = {"tokens_per_sec": tokens / elapsed}
        done = max(step - self._start_step, 1)
        eta = (now - self._start_time) / done * (self.total - step)
        self._last_time, self._last_step = now, step
        throughput = f"{rates['tokens_per_sec'] / 1e3:,.1f}k tok/s"
        if self._flops_per_step:
            seconds_per_step = elapsed / steps
            rates["tflops_per_device"] = self._flops_per_step / seconds_per_step / self._num_devices / 1e12
            throughput += f" | {rates['tflops_per_device']:.3g} TFLOP/s/device"
            utilisation = flops.mfu(self._flops_per_step, seconds_per_step, self._num_devices, self._device_kind)
            if utilisation is not None:
                rates["mfu"] = utilisation
                throughput += f" | MFU {100 * utilisation:.1f}%"
        width = len(str(self.total))
        # Distillation: the soft and hard terms of the loss.
        parts = f" (kl {metrics['kl']:.4f}, ce {metrics['ce']:.4f})" if "kl" in metrics else ""
        text = (f"step {step:>{width}}/{self.total} | loss {metrics['loss']:.4f}{parts} | "
                f"token_accuracy {metrics['token_accuracy']:.3f} | lr {metrics['learning_rate']:.2e} | "
                f"{throughput} | {elapsed / steps * 1e3:.0f} ms/step | ETA {format_duration(eta)}")
        return text, rates
