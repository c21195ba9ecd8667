"""A checkpoint write that the storage rejects: one line that names the storage's error and what to do, and none of
the pages that orbax's and tensorstore's background threads print about it.

Orbax writes in background threads and re-raises their error in the caller (the next save, or the wait for it),
where `checkpoint_writes` turns it into one `paths.StorageUnreachable` line. The same error is meanwhile logged
with its traceback by each orbax thread it passed through, and tensorstore's callbacks into orbax's per-call
event loops, closed by then, print "Event loop is closed" tracebacks: `quiet_background_reports` drops both.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from sora_jax import paths
from sora_jax.errors import SoraError

# tensorstore's words for a store that answers without object generations (some emulators and gateways), which
# OCDBT's conditional manifest writes need; Cloud Storage itself has them.
_NO_GENERATIONS = "Malformed StorageGeneration"


def is_write_failure(error: BaseException) -> bool:
    """Whether an error raised by an orbax write comes from the storage (or from tensorstore, which writes for it)
    rather than from Sora's code."""
    return paths.is_storage_error(error) or paths.is_tensorstore_error(error)


def _detail(error: BaseException) -> str:
    text = paths.first_line(error)
    # tensorstore nests what it was doing ('Error opening "zarr" driver: Error writing gs://...: <cause>'): the
    # innermost step names the object and the store's answer.
    start = text.rfind("Error ")
    return f"{type(error).__name__}: {text[start:] if start > 0 else text}"


def failure_message(what: str, error: BaseException, *, use_ocdbt: bool) -> str:
    """One line: what failed, the storage's answer, and what to do."""
    detail = _detail(error)
    if use_ocdbt and _NO_GENERATIONS in str(error):
        return (f"{what} failed ({detail}): this storage does not keep the object generations that OCDBT checkpoints "
                "need for their conditional writes. Run the same command again with "
                "--config.checkpoint_ocdbt=false; nothing of this write was committed, and earlier checkpoints are "
                "intact.")
    return (f"{what} failed ({detail}); the storage is unreachable or refused the write. Nothing of this write was "
            "committed and the last committed checkpoint is intact: run the same command again to resume once the "
            "storage is back.")


@contextlib.contextmanager
def checkpoint_writes(what: str, *, use_ocdbt: bool) -> Iterator[None]:
    """Turn a storage failure of an orbax write (started or awaited in the block) into one StorageUnreachable line;
    other errors pass unchanged."""
    try:
        yield
    except SoraError:
        raise
    except Exception as e:
        if not is_write_failure(e):
            raise
        raise paths.StorageUnreachable(failure_message(what, e, use_ocdbt=use_ocdbt)) from None


class _ReportedElsewhere(logging.Filter):
    """Drops orbax's tracebacks of a write failure: the caller reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not ("/orbax/" in record.pathname.replace("\\", "/") and error is not None and is_write_failure(error))


def _is_closed_loop_callback(unraisable: Any) -> bool:
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


_installed = False


def quiet_background_reports() -> None:
    """Install, once per process, the filters described in the module docstring (everything else still prints)."""
    global _installed
    if _installed:
        return
    _installed = True
    logging.getLogger("absl").addFilter(_ReportedElsewhere())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
