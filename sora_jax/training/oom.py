"""Out of accelerator memory, as one line: what needs how much per chip against how much, and what to change.

The TPU compiler refuses a program that does not fit ("RESOURCE_EXHAUSTED: ... HLO temporaries (15.80G) exceeds
available HBM (15.75G)"), at `--dry_run --topology` time and at a real run's first step alike; a buffer that cannot
be allocated at run time says RESOURCE_EXHAUSTED too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from sora_jax.errors import SoraError

FIXES = ("shard more (config.mesh.fsdp=-1: params and optimizer state over every chip), keep fewer activations "
         "(config.model.remat_policy=full), or put fewer rows on each chip (config.grad_accum_steps=2, 4, ... or a "
         "smaller batch_size)")
_TEMPORARIES = re.compile(r"memory required for ([\w ]+?) \(([\d.]+\s*[KMGT]?i?B?)\) exceeds available HBM "
                          r"\(([\d.]+\s*[KMGT]?i?B?)\)")


def is_oom(error: BaseException) -> bool:
    """Whether `error` is XLA's out-of-memory (RESOURCE_EXHAUSTED), at compile or at run time."""
    return "RESOURCE_EXHAUSTED" in str(error)


def message(error: BaseException, what: str, device_kind: str) -> str:
    """One line for an out-of-memory `error` of `what` (e.g. "the train step") on `device_kind` chips."""
    text = str(error)
    found = _TEMPORARIES.search(text)
    if found:
        needed = f"{found.group(2)} for {found.group(1)}"
        return (f"{what} does not fit in a {device_kind} chip's memory: it needs {needed} per chip and the chip has "
                f"{found.group(3)}; {FIXES}.")
    detail = text.split("RESOURCE_EXHAUSTED:", 1)[-1].strip().splitlines()[0][:200] if text.strip() else ""
    return f"{what} ran out of {device_kind} memory ({detail}); {FIXES}."


def one_line_oom(fn: Callable[..., Any], what: str, device_kind: str) -> Callable[..., Any]:
    """`fn` whose out-of-memory error (compile or run) becomes a SoraError with `message`; other errors pass."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - jax raises JaxRuntimeError; only its OOM is translated
            if is_oom(e):
                raise SoraError(message(e, what, device_kind)) from None
            raise

    return call
