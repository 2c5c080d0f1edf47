"""User-facing errors: each message says what was wrong and how to fix it."""


class KyxError(Exception):
    """Base class for errors caused by user input rather than by a bug in kyx."""

    exit_code = 2    # what `kyx ...` exits with after printing the message
    label = "error"  # the message's prefix on stderr


class ConfigError(KyxError, ValueError):
    """A config key, value or combination is invalid (unknown key, bad type, bad mesh)."""


class DataError(KyxError, ValueError):
    """Input data is missing or malformed beyond what can be skipped."""


class CheckpointError(KyxError, RuntimeError):
    """A checkpoint is missing, unreadable or corrupted."""


class IntegrityError(KyxError, RuntimeError):
    """A file's bytes differ from the digest recorded when it was written."""


class WorkdirBusy(KyxError, RuntimeError):
    """Another kyx process holds the workdir's lock."""


class Preempted(KyxError, RuntimeError):
    """SIGTERM / SIGINT stopped the run after a final checkpoint; rerunning resumes it."""

    exit_code = 75  # EX_TEMPFAIL: try again (schedulers may requeue on it)
    label = "preempted"
