"""The one exception type for problems a user can fix (bad config, missing data, bad checkpoint)."""


class SoraError(Exception):
    """A user-facing error: its message says what is wrong and what to do; no traceback is needed."""
