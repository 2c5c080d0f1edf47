"""Documents to tokens, and packed rows to next-token targets: the steps the packing
pipeline (kyx/data/pipeline.py) and the token cache (kyx/data/token_cache.py) share."""
from __future__ import annotations

import threading
from typing import Any

import grain
import numpy as np

from kyx.data import chunking
from kyx.errors import DataError
from kyx.logs import get_logger

log = get_logger(__name__)


def record_text(record: Any, feature: str) -> tuple[str | None, str | None]:
    """Text of a record, or (None, reason) with reason 'invalid_utf8' or 'empty'."""
    value = record
    for key in feature.split("/"):
        value = value[key]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if not isinstance(value, str):
        raise DataError(f"Feature {feature!r} holds {type(value).__name__}, not text; "
                        f"set data.text_feature to a text feature.")
    return (None, "empty") if not value or value.isspace() else (value, None)


class ReadStats:
    """Records skipped while reading, by reason (counted each time they are read).

    Exact with ``worker_count=0``; worker processes keep their own counts.
    Malformed files of local corpora are already dropped when the corpus is
    built; see ``Corpus.stats``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = {"invalid_utf8": 0, "empty": 0}

    def add(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1

    def __getstate__(self):
        return {"counts": dict(self.counts)}

    def __setstate__(self, state):
        self.__init__()
        self.counts.update(state["counts"])


class Tokenize(grain.transforms.Map):
    """Record -> {'tokens': BOS + ids + EOS}, or None (skipped and counted) if malformed.

    BOS starts every document so that generation from BOS + prompt (kyx.load(...).generate)
    sees the same context a document start had in training. Documents longer than
    ``max_chars`` (default ``chunking.MAX_CHARS``) are encoded in pieces cut where the
    tokenizer starts a word anyway (kyx/data/chunking.py): same tokens, one document,
    linear time and bounded tokenizer memory."""

    def __init__(self, tokenizer: Tokenizer, feature: str, stats: ReadStats,
                 max_chars: int | None = None):
        self.tokenizer, self.feature, self.stats = tokenizer, feature, stats
        self.max_chars = max_chars or chunking.MAX_CHARS
        self.style = chunking.cut_style(tokenizer)
        self._warned = False

    def map(self, record):
        text, reason = record_text(record, self.feature)
        if text is None:
            self.stats.add(reason)
            return None
        if self.style is None and len(text) > self.max_chars and not self._warned:
            self._warned = True
            log.warning("Tokenizer %s does not encode text pieces like the whole text; "
                        "documents are encoded whole (slow and memory-heavy for long ones).",
                        type(self.tokenizer).__name__)
        return {"tokens": chunking.encode_document(self.tokenizer, text, self.style,
                                                   self.max_chars)}


def next_token_targets(tokens: np.ndarray, segment_ids: np.ndarray,
                       pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets, loss_mask) for packed rows: next token within the same segment."""
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    targets = np.full_like(tokens, pad_id)
    targets[:, :-1] = np.where(same, tokens[:, 1:], pad_id)
    loss_mask = np.zeros(tokens.shape, np.float32)
    loss_mask[:, :-1] = same
    return targets, loss_mask
