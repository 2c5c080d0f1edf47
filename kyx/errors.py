"""User-facing errors: each message says what was wrong and how to fix it."""


class KyxError(Exception):
    """Base class for errors caused by user input rather than by a bug in kyx."""


class ConfigError(KyxError, ValueError):
    """A config key, value or combination is invalid (unknown key, bad type, bad mesh)."""


class DataError(KyxError, ValueError):
    """Input data is missing or malformed beyond what can be skipped."""


class CheckpointError(KyxError, RuntimeError):
    """A checkpoint is missing, unreadable or corrupted."""
