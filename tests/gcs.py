"""A real local Cloud Storage emulator (the `gcp-storage-emulator` package) for the bucket tests.

Started on 127.0.0.1 with a free port; gcsfs (through etils.epath) and tensorstore (through orbax) are pointed
at it by the environment variables they honour, in this process and in every subprocess a test starts.
Nothing leaves the machine.

The emulator runs with one change (`python gcs.py start ...`, see `_serve`): it rewrites its whole metadata file
(the JSON of every object) after each write, which is quadratic in the number of objects; a few checkpoints in
orbax's per-array format made that minutes of the bucket tests. Here the file is written once, when the emulator
stops (SIGTERM), and not at all in memory, where nothing reads it back.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
    command = [sys.executable, __file__, "start", "--host=127.0.0.1", f"--port={port}",
               f"--default-bucket={BUCKET}", "--quiet"]
    if in_memory:
        command.append("--in-memory")
    process = subprocess.Popen(command, cwd=data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port)
        yield url
    finally:
        process.terminate()  # It writes its metadata (on disk) and exits.
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
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

    # The class's cache, not an instance's: making an instance outside the emulator looks for Google credentials,
    # which takes 15 s on a machine without them.
    filesystem = fsspec.get_filesystem_class("gs")
    saved = {k: os.environ.get(k) for k in environment(url)}
    os.environ.update(environment(url))
    filesystem.clear_instance_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        filesystem.clear_instance_cache()


def _serve(argv: list[str]) -> None:
    """The emulator's command line, its metadata file written only when it stops (see the module docstring)."""
    from gcp_storage_emulator import __main__ as emulator_cli
    from gcp_storage_emulator.storage import Storage

    write_metadata = Storage._write_config_to_file
    Storage._write_config_to_file = lambda self: None
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # For sigwait below, in every thread.
    server = emulator_cli.main(argv, test_mode=True)
    server.start()
    signal.sigwait({signal.SIGTERM})
    # No orderly shutdown: the server thread may sit in a client's keep-alive connection for many seconds.
    for _ in range(100):
        try:
            if "--in-memory" not in argv:
                write_metadata(server._storage)
            break
        except RuntimeError:  # A request changed the objects while they were being written: again.
            time.sleep(0.01)
    os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1:])
