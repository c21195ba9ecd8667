"""Paths that may be buckets: every file Sora reads or writes in a run directory goes through `etils.epath`.

`pathlib.Path("gs://b/x")` silently collapses to the relative `gs:/b/x`; `epath.Path` keeps the scheme and
reaches Cloud Storage (and any other fsspec / tf.io.gfile scheme) through gcsfs. Two facts of object stores shape
the helpers below: an object upload is atomic by itself (readers see the old object or the new one), and there
is no rename (a "move" is copy + delete), so atomic writes use write-then-rename only on local disks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from etils import epath

from sora_jax.errors import SoraError

PathLike = str | os.PathLike | epath.Path

# How long a bucket may take to answer the first request before a run gives up on it.
BUCKET_CHECK_TIMEOUT_S = 30.0
# How often a long write to a bucket asks whether the bucket still answers (`while_bucket_answers`).
BUCKET_POLL_S = 5.0


def as_path(path: PathLike) -> epath.Path:
    """An `epath.Path`: local paths made absolute (`~` expanded), bucket URLs kept as they are."""
    text = os.fspath(path)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URL of an object store or remote filesystem (gs://, s3://, ...)."""
    return "://" in os.fspath(path)


def bucket_of(path: PathLike) -> str:
    """`gs://bucket/a/b` -> `gs://bucket`."""
    scheme, _, rest = os.fspath(path).partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def quiet_storage_logs() -> None:
    """gcsfs and google-auth warn on every request without application default credentials (expected with a
    public or emulated bucket, and with credentials found later by the metadata server); keep errors only.
    gcsfs also logs a whole traceback when a request runs out of retries; the exception it then raises reaches
    `storage_errors`, which reports it in one line, so gcsfs's own log is left out."""
    for name in ("gcsfs.credentials", "google.auth", "google.auth._default", "fsspec"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def check_reachable(path: PathLike, what: str) -> None:
    """For a bucket path: a SoraError within seconds when its bucket does not exist or cannot be read with
    this machine's credentials. Local paths: a SoraError when a parent is a regular file."""
    text = os.fspath(path)
    if not is_remote(text):
        parent = as_path(text)
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == as_path(text) else f"is inside {parent}, which is a file"
            raise SoraError(f"{what} {text} {where}, not a directory; choose another path.")
        return
    bucket = bucket_of(text)
    try:
        exists = bucket_exists(text)
    except TimeoutError:
        raise SoraError(f"{what} {text}: the bucket {bucket} did not answer within {BUCKET_CHECK_TIMEOUT_S:.0f} s; "
                        "check the network and credentials (gcloud auth application-default login).") from None
    except Exception as e:  # noqa: BLE001 - any failure of the first request means the bucket is unusable.
        raise SoraError(f"{what} {text}: cannot reach the bucket {bucket} ({type(e).__name__}: "
                        f"{first_line(e)}); check its name and this machine's credentials "
                        "(gcloud auth application-default login).") from None
    if not exists:
        raise SoraError(f"{what} {text}: the bucket {bucket} does not exist or these credentials cannot see it; "
                        f"create it (gcloud storage buckets create {bucket}) or fix the name.")


def bucket_exists(path: PathLike) -> bool:
    """Whether the bucket of `path` exists, asked with one request that may take BUCKET_CHECK_TIMEOUT_S at most
    (TimeoutError after that; the storage client's own error when the request fails)."""
    quiet_storage_logs()
    bucket = bucket_of(path)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(lambda: epath.Path(bucket).exists()).result(timeout=BUCKET_CHECK_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"the bucket {bucket} did not answer within {BUCKET_CHECK_TIMEOUT_S:.0f} s") from None
    finally:
        pool.shutdown(wait=False)


def while_bucket_answers[T](path: PathLike, work: Callable[[], T]) -> T:
    """`work()`; for a bucket path, the bucket is asked every BUCKET_POLL_S meanwhile, and once it stops answering
    an OSError (FileNotFoundError, TimeoutError or the client's error) is raised here while `work` is left
    behind in its daemon thread.

    For writers that wait without a bound when the storage goes away mid-call: orbax's threads wait out a 300 s
    coordination timeout per item when the bucket is lost while it creates a step's folder.
    """
    if not is_remote(path):
        return work()
    result: list[T] = []
    failure: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below.
            failure.append(e)
        finally:
            finished.set()

    threading.Thread(target=run, name="sora-storage-work", daemon=True).start()
    while not finished.wait(BUCKET_POLL_S):
        if not bucket_exists(path):
            raise FileNotFoundError(f"the bucket {bucket_of(path)} is gone")
    if failure:
        raise failure[0]
    return result[0]


# tensorstore (orbax's reader and writer) appends the whole JSON spec of what it opened to its messages.
_TENSORSTORE_SPEC = re.compile(r"\s*\[(tensorstore_spec|source locations)\b.*$")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message without tensorstore's spec (library errors can be pages long)."""
    text = str(error).strip()
    return _TENSORSTORE_SPEC.sub("", text.splitlines()[0])[:300] if text else ""


def write_text(path: epath.Path, text: str) -> None:
    """Write a whole file atomically: readers see the old content or the new, never a part."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: epath.Path, data: bytes) -> None:
    """Bytes version of `write_text`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        path.write_bytes(data)  # One object upload: atomic on object stores.
        return
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(os.fspath(tmp), os.fspath(path))


def move(source: epath.Path, target: epath.Path) -> None:
    """Move a file or directory tree. Local: one rename (atomic). Buckets have no rename: copy every object,
    then delete the source (a reader may see both for a moment, never neither)."""
    if not is_remote(source):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(os.fspath(source), os.fspath(target))
        return
    if source.is_dir():
        for file in sorted(source.rglob("*")):
            if not file.is_dir():
                destination = target / file.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                file.copy(destination, overwrite=True)
        source.rmtree()
    else:
        source.copy(target, overwrite=True)
        source.unlink()


def remove_tree(path: epath.Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


def read_text_or_none(path: epath.Path) -> Any:
    """The text of `path`, or None when it does not exist."""
    return path.read_text(encoding="utf-8") if path.exists() else None


class StorageUnreachable(SoraError):
    """A read or write of a run's storage failed: writes still in flight to it may never finish."""


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn a failing read or write of a (remote) file into one StorageUnreachable line that says what failed."""
    try:
        yield
    except SoraError:
        raise
    except Exception as e:
        if not is_storage_error(e):
            raise
        raise StorageUnreachable(f"{what} failed ({type(e).__name__}: {first_line(e)}); the storage is unreachable or "
                        "refused the write. The last committed checkpoint is intact: run the same command again "
                        "to resume once the storage is back.") from None


# tensorstore raises ValueError whatever failed, its message led by the status code: these codes say that the
# store refused or did not answer, not that what it holds is bad.
_TENSORSTORE_ACCESS_CODES = ("PERMISSION_DENIED", "UNAUTHENTICATED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED",
                             "RESOURCE_EXHAUSTED", "CANCELLED")


def storage_cause(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain (itself, then what it was raised from) that comes from the filesystem or a
    storage client rather than from Sora's code or the data: an OSError or TimeoutError, a storage client's
    error, or a tensorstore error whose code says the store refused or did not answer. None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        package = type(error).__module__.split(".")[0]
        if (isinstance(error, OSError | TimeoutError) or package in ("gcsfs", "fsspec", "aiohttp", "google")
                or str(error).startswith(_TENSORSTORE_ACCESS_CODES)):
            return error
        error = error.__cause__ or error.__context__
    return None


def is_storage_error(error: BaseException) -> bool:
    """Whether an exception comes from the filesystem or a storage client (see `storage_cause`)."""
    return storage_cause(error) is not None


def is_tensorstore_error(error: BaseException) -> bool:
    """Whether an exception was raised by tensorstore, which orbax reads and writes arrays with (it names the spec
    of what it opened, or its source locations)."""
    return _TENSORSTORE_SPEC.search(str(error).splitlines()[0] if str(error) else "") is not None
