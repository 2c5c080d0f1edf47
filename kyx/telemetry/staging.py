"""A local directory for writers that only write local files (tensorboardX, the JAX
profiler), mirrored into a workdir that may be remote (any ``etils.epath`` URL).

For a local target the directory is the target itself and ``sync`` does nothing; for a
remote one it is a temporary directory whose new or changed files ``sync`` copies to the
target (``close`` syncs once more and removes it).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kyx.fileio import as_path, is_local


class StagedDir:
    """``local``: the directory to give the writer; ``sync`` / ``close`` publish it."""

    def __init__(self, target):
        self.target = as_path(target)
        if is_local(target):
            self.local, self._tmp = Path(str(self.target)), None
        else:
            self._tmp = tempfile.mkdtemp(prefix="kyx-staged-")
            self.local = Path(self._tmp)
        self.local.mkdir(parents=True, exist_ok=True)
        self._copied: dict[Path, tuple[int, int]] = {}  # file -> (size, mtime_ns) copied

    def sync(self) -> None:
        """Copy files that are new or changed since the last sync to the target."""
        if self._tmp is None:
            return
        for f in sorted(self.local.rglob("*")):
            if not f.is_file():
                continue
            st = f.stat()
            if self._copied.get(f) == (st.st_size, st.st_mtime_ns):
                continue
            dst = self.target / f.relative_to(self.local).as_posix()
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
            self._copied[f] = (st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        if self._tmp is None:
            return
        try:
            self.sync()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
