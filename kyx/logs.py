"""kyx's library messages (resume, fallbacks, skipped records) go through `logging`.

Every module logs to a child of the ``kyx`` logger (``get_logger(__name__)``). That logger
prints plain lines to the *current* ``sys.stdout`` (so notebooks, pytest's capture and
redirections see them) with warnings prefixed ``WARNING:``; it does not propagate to the
root logger, so absl's handler does not print them twice. Silence or redirect it with the
standard API, e.g. ``logging.getLogger("kyx").setLevel(logging.WARNING)``.
"""
from __future__ import annotations

import logging
import sys

ROOT = "kyx"


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


_configure()


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``kyx.x.y``), a child of the ``kyx`` logger."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".")
                             else f"{ROOT}.{name}")
