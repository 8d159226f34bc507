"""User-facing errors and the ways a run ends early.

Every problem a user can fix (bad data, bad config, missing file) raises a subclass of
:class:`U2PlusError`. The CLI prints such errors as one line ``error: ...`` and exits with the
error's ``exit_code`` (2, or 3 for a non-finite loss), without a traceback; anything else is a
bug and keeps its traceback. :class:`RunStopped` is no error: training stopped on a signal
after writing its checkpoint.
"""


class U2PlusError(Exception):
    """Base class of the errors the CLI reports as a single line."""

    exit_code = 2


class DataError(U2PlusError):
    """A dataset file is missing, unreadable or inconsistent (the message names the file)."""


class ConfigError(U2PlusError):
    """A config key does not exist or has an invalid value (the message names the key)."""


class CheckpointError(U2PlusError):
    """A checkpoint or weight file is missing, cannot be loaded or does not fit."""


class NonFiniteLossError(U2PlusError):
    """The loss became NaN or infinite (the message names the report in the run folder)."""

    exit_code = 3


class RunStopped(Exception):
    """Training stopped at a step boundary on SIGTERM or SIGINT, after writing its checkpoint.

    ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT); the message is
    empty on processes other than rank 0, which print nothing.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
