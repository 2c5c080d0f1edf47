"""One builder per shared artifact: processes that need the same corpus, token cache or
tokenizer under the shared data directory wait for the first to build it, then reuse it.

Two runs started together on a fresh machine (a sweep on two cores, two notebooks) would
otherwise build the same artifact at once: tfds builds a dataset in a temporary folder and
renames it into place, and the second build dies on that rename (``FileExistsError``);
the token cache and the tokenizer would be built twice. Each build of a shared artifact
therefore holds an exclusive ``filelock`` (``flock`` underneath, which the kernel drops when
its holder dies, so a killed build never blocks the next one), and the caller checks "is it
built?" again once it holds the lock. Remote and read-only data directories (a prepared
cache shared read-only by a team) are not locked.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import filelock

from kyx.fileio import is_local
from kyx.logs import get_logger

log = get_logger(__name__)


def _writable(directory: str) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


@contextlib.contextmanager
def exclusive_build(path: str, what: str) -> Iterator[None]:
    """Holds ``<path>.lock`` (blocking) while the body builds ``what`` at ``path``."""
    if not (is_local(path) and _writable(os.path.dirname(os.path.abspath(path)))):
        yield   # remote, or a read-only shared cache: reuse what is there, or fail building
        return
    lock = filelock.FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("Waiting for another process to finish building %s (lock %s)", what,
                 lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
