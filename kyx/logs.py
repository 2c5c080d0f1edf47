"""kyx's library messages (resume, fallbacks, skipped records) go through `logging`.

Every module logs to a child of the ``kyx`` logger (``get_logger(__name__)``). That logger
prints plain lines to the *current* ``sys.stdout`` (so notebooks, pytest's capture and
redirections see them) with warnings prefixed ``WARNING:``; it does not propagate to the
root logger, so absl's handler does not print them twice. Silence or redirect it with the
standard API, e.g. ``logging.getLogger("kyx").setLevel(logging.WARNING)``.

The libraries kyx drives (Orbax, tensorflow-datasets, grain: all log through absl) are
quiet by default: the known lines in ``LIBRARY_NOISE`` are dropped and library warnings
while kyx builds its corpora are not shown. ``kyx --verbose`` (``set_verbose(True)``, or
``KYX_VERBOSE=1`` in the environment, e.g. for notebooks) brings them back and lowers
absl's level to INFO.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

import absl.logging  # noqa: F401 (creates the "absl" logger as an ABSLLogger first)

ROOT = "kyx"
VERBOSE_ENV = "KYX_VERBOSE"

# (logger, message start): lines a library prints every time kyx uses it as intended and
# that tell a user nothing; dropped unless verbose. One line per message.
LIBRARY_NOISE = [
    # orbax CheckpointManager(read_only=True), on every kyx.load / sample / convert
    ("absl", "Given directory is read only="),
]

_verbose = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _StdoutHandler(logging.StreamHandler):
    """A StreamHandler bound to whatever sys.stdout is at the time of each message."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname}: {text}" if record.levelno >= logging.WARNING else text


def _configure() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class _DropLibraryNoise(logging.Filter):
    """Drops the LIBRARY_NOISE lines of one library logger unless kyx is verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose or not isinstance(record.msg, str):
            return True
        return not any(record.name == name and record.msg.startswith(start)
                       for name, start in LIBRARY_NOISE)


def _quiet_library_noise() -> None:
    for name in {name for name, _ in LIBRARY_NOISE}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLibraryNoise) for f in logger.filters):
            logger.addFilter(_DropLibraryNoise())


_configure()
_quiet_library_noise()


def verbose() -> bool:
    """Whether library logs are shown (``kyx --verbose``, ``KYX_VERBOSE=1``)."""
    return _verbose


def set_verbose(flag: bool) -> None:
    """Show (True) or hide (False) the library logs: LIBRARY_NOISE, the library warnings
    inside ``quiet_libraries()`` and absl's INFO lines (Orbax, tfds, grain)."""
    global _verbose
    _verbose = bool(flag)
    logging.getLogger("absl").setLevel(logging.INFO if _verbose else logging.NOTSET)


@contextlib.contextmanager
def quiet_libraries():
    """Library (absl) warnings inside the block are dropped unless verbose: for calls whose
    warnings are expected and explained by kyx's own message (e.g. tfds builders of
    configs that are not in their BUILDER_CONFIGS, datasets prepared for the first time)."""
    if _verbose:
        yield
        return
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


if _verbose:
    set_verbose(True)


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``kyx.x.y``), a child of the ``kyx`` logger."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".")
                             else f"{ROOT}.{name}")
