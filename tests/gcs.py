"""A real local Cloud Storage emulator (the `gcp-storage-emulator` package) for the bucket tests.

Started on 127.0.0.1 with a free port; gcsfs (through etils.epath) and tensorstore (through orbax) are pointed
at it by the environment variables they honour, in this process and in every subprocess a test starts.
Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import portpicker

BUCKET = "sora-test"  # Cloud Storage bucket names need 3+ characters (tensorstore checks).


@contextlib.contextmanager
def emulator(*, in_memory: bool = True, data_dir: str | None = None) -> Iterator[str]:
    """Run the emulator for the duration of the block; yields its URL. On disk (in_memory=False, in `data_dir`)
    it keeps the objects across a restart."""
    port = portpicker.pick_unused_port()
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}",
               f"--default-bucket={BUCKET}", "--quiet"]
    if in_memory:
        command.append("--in-memory")
    process = subprocess.Popen(command, cwd=data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port)
        yield url
    finally:
        process.kill()
        process.wait(timeout=30)


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the storage emulator did not open port {port} within {timeout_s} s")


def environment(url: str) -> dict[str, str]:
    """The variables that send gcsfs and tensorstore to the emulator."""
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}


@contextlib.contextmanager
def pointed_at(url: str) -> Iterator[None]:
    """This process's gcsfs and tensorstore pointed at the emulator (fsspec caches filesystems: cleared)."""
    import fsspec

    saved = {k: os.environ.get(k) for k in environment(url)}
    os.environ.update(environment(url))
    fsspec.filesystem("gs").clear_instance_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fsspec.filesystem("gs").clear_instance_cache()
