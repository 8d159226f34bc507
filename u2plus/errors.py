"""User-facing errors.

Every problem a user can fix (bad data, bad config, missing file) raises a subclass of
:class:`U2PlusError`. The CLI prints such errors as one line ``error: ...`` and exits with
status 2, without a traceback; anything else is a bug and keeps its traceback.
"""


class U2PlusError(Exception):
    """Base class of the errors the CLI reports as a single line."""


class DataError(U2PlusError):
    """A dataset file is missing, unreadable or inconsistent (the message names the file)."""


class ConfigError(U2PlusError):
    """A config key does not exist or has an invalid value (the message names the key)."""


class CheckpointError(U2PlusError):
    """A checkpoint or weight file is missing or cannot be loaded."""
