"""The one exception type for problems a user can fix (bad config, missing data, bad checkpoint), and the
"did you mean" suggestion its messages share (config keys, command-line flags)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SoraError(Exception):
    """A user-facing error: its message says what is wrong and what to do; no traceback is needed."""


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like a misspelled `name` (difflib ratio at least 0.5), or None."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return match[0] if match else None
