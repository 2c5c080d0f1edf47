"""``<workdir>/metrics.jsonl``: one JSON object per line, ``{"step": N, "<name>": value}``.

JSON has no NaN/Inf, so non-finite floats are written as the strings "nan", "inf" and
"-inf"; ``read_metrics`` turns them back into floats. On a local workdir every line is
flushed as it is written, so a killed run loses at most its last (partial) line, which
readers skip. A remote workdir (``gs://...``: objects cannot be appended to) gets the
whole file rewritten at most every ``flush_secs`` and at close. A resumed run first drops
the rows written after the step it resumes from, so no step appears twice.
"""
from __future__ import annotations

import json
import math
import time

from kyx.errors import DataError
from kyx.fileio import as_path, atomic_write, is_local
from kyx.telemetry.sink import Sink, SinkContext

METRICS_FILE = "metrics.jsonl"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class JsonlSink(Sink):
    """Appends one line per row (local), or keeps the file's text and uploads it whole
    (remote); ``resume_step`` first drops the rows after that step."""

    def __init__(self, workdir, resume_step: int | None = None, flush_secs: float = 0.0):
        # remote: 0 uploads at every flush (train.log_every), so readers such as the
        # end-of-run plot hook see every row written so far
        self.path = as_path(workdir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = _trim(self.path, resume_step)
        self._file = self.path.open("a", encoding="utf-8") if is_local(self.path) else None
        self._text, self._dirty = text, False              # remote only
        self._flush_secs, self._flushed = flush_secs, time.monotonic()

    def write(self, step, row) -> None:
        line = encode_row({"step": step, **row})
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._text, self._dirty = self._text + line, True

    def flush(self) -> None:
        if self._dirty and time.monotonic() - self._flushed >= self._flush_secs:
            self._upload()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._dirty:
            self._upload()

    def _upload(self) -> None:
        self.path.write_text(self._text)
        self._dirty, self._flushed = False, time.monotonic()


def make_sink(ctx: SinkContext) -> JsonlSink:
    return JsonlSink(ctx.workdir, ctx.resume_step)


def encode_row(row: dict) -> str:
    """One line of metrics.jsonl (strict JSON: non-finite floats as strings)."""
    return json.dumps({k: _encode(v) for k, v in row.items()}, allow_nan=False) + "\n"


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _decode(row: dict) -> dict:
    return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


def read_metrics(workdir) -> list[dict]:
    """Rows of ``<workdir>/metrics.jsonl`` ([] if absent). A truncated last line is
    skipped; a corrupt line elsewhere is a DataError."""
    return read_jsonl(as_path(workdir) / METRICS_FILE)


def read_jsonl(path) -> list[dict]:
    """Rows of any of our JSON-lines files (metrics.jsonl, eval_stats.jsonl; [] if absent),
    with the same tolerance of a truncated last line."""
    path = as_path(path)
    if not path.exists():
        return []
    return _parse(path.read_text(encoding="utf-8"), path)


def _parse(text: str, path) -> list[dict]:
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no trailing newline: the writer died mid-line
                break
            raise DataError(f"{path}:{i + 1} is not valid JSON ({e}); delete or fix that "
                            "line") from None
        rows.append(_decode(row))
    return rows


def trim_rows(path, resume_step: int) -> None:
    """Drop the rows after ``resume_step`` (and a half-written last line) from a JSON-lines
    file such as eval_stats.jsonl when a run resumes: the steps it redoes are appended
    again, and an append after a torn line would corrupt the file."""
    _trim(as_path(path), resume_step)


def _trim(path, resume_step: int | None) -> str:
    """Cut the file to the rows with step <= ``resume_step`` (None: only a partial last
    line, so the next append starts on a fresh line); returns the text kept."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    if resume_step is None:
        kept = text[: text.rfind("\n") + 1]
    else:
        kept = "".join(encode_row(r) for r in _parse(text, path)
                       if r.get("step", -1) <= resume_step)
    if kept != text:
        _replace(path, kept)
    return kept


def append_line(path, line: str) -> None:
    """Append ``line`` (and a newline) to a text file such as ``eval_stats.jsonl``; a
    remote file (objects cannot be appended to) is rewritten whole."""
    path = as_path(path)
    if is_local(path):
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        path.write_text(old + line + "\n")


def _replace(path, text: str) -> None:
    """Replace the whole file atomically (kyx/fileio.py: rename locally, one upload
    remotely)."""
    atomic_write(path, text)
