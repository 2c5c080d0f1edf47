"""Encoding long documents in bounded pieces, with the tokens of a whole-text encode.

SentencePiece BPE slows down and takes memory superlinearly on long inputs: one 50 MB
line took minutes and gigabytes in ``encode``. ``encode_document`` cuts a long text into
pieces of at most ``max_chars`` characters and encodes them one by one, cutting where
the tokenizer starts a new word anyway, so the tokens are those of the whole text:

* ``"run"``: before a run of spaces (SentencePiece's whitespace split);
* ``"last"``: before the last space of a run followed by a non-space (the
  ``\\s+(?!\\S)`` / `` ?\\p{L}+`` pre-tokenizers of byte-level BPE: GPT-2, Llama 3, Qwen).

Where a window has no such place, the cut goes after its last newline, else at
``max_chars`` (8K characters without a space), if that keeps the decoded text.

``cut_style`` probes a tokenizer once for a style that reproduces the whole-text tokens
on short samples. Tokenizers that prepend a space to every input (SentencePiece's
``add_dummy_prefix``, e.g. Llama 2) cut before runs and drop each later piece's leading
space. A tokenizer that passes no probe gets its text whole.
"""
from __future__ import annotations

import dataclasses

import numpy as np

MAX_CHARS = 1 << 13  # longest piece handed to the tokenizer; faster than longer ones
_RUNS = (1, 2, 4, 8)  # probed lengths of space runs
_HEADS = ("a", "a,", "a\n")  # probed text before a run


@dataclasses.dataclass(frozen=True)
class CutStyle:
    """Where a tokenizer's text can be cut without changing its tokens."""

    before: str = "run"          # "run" or "last" (see the module docstring)
    inside_words: bool = True    # cuts at newlines / max_chars keep the decoded text
    drop_space: bool = False     # the tokenizer adds a space before every piece


def split_points(text: str, max_chars: int, before: str = "run",
                 inside_words: bool = True) -> list[int]:
    """Cut offsets (ascending, excluding 0 and len) giving pieces of <= ``max_chars``.

    In each window the cut goes at the last place of kind ``before``; failing that, after
    its last newline, else at ``max_chars``. With ``inside_words=False`` only the first
    kind of cut is made, so a piece may be longer."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if before not in ("run", "last"):
        raise ValueError(f"before must be 'run' or 'last', got {before!r}")
    cuts, start, n = [], 0, len(text)
    while n - start > max_chars:
        end = start + max_chars
        p = _last_cut(text, start, end, before)
        if p <= start:
            if inside_words:
                p = text.rfind("\n", start, end) + 1
                p = p if p > start else end
            else:
                p = _next_cut(text, end, before)
                if p < 0:
                    break
        cuts.append(p)
        start = p
    return cuts


def _is_cut(text: str, p: int, before: str) -> bool:
    if before == "run":
        return text[p - 1] != " "
    return p + 1 < len(text) and not text[p + 1].isspace()


def _last_cut(text: str, start: int, end: int, before: str) -> int:
    """The last cut of kind ``before`` in (start, end], else -1."""
    p = text.rfind(" ", start + 1, end + 1)
    while p > start and not _is_cut(text, p, before):
        p = text.rfind(" ", start + 1, p)
    return p if p > start else -1


def _next_cut(text: str, pos: int, before: str) -> int:
    """The first cut of kind ``before`` at or after ``pos``, else -1."""
    p = text.find(" ", pos)
    while p >= 0 and not _is_cut(text, p, before):
        p = text.find(" ", p + 1)
    return p


def cut_style(tokenizer) -> CutStyle | None:
    """The first ``CutStyle`` under which pieces of the probe texts encode like the whole."""
    enc = lambda text: list(tokenizer.encode(text))  # noqa: E731
    samples = [(head, " " * k + "bc d") for head in _HEADS for k in _RUNS]
    wholes = [enc(a + b) for a, b in samples]

    def exact(before, drop):
        for (a, b), whole in zip(samples, wholes):
            k = len(b) - len(b.lstrip(" ")) - 1 if before == "last" else 0
            if enc(a + b[:k]) + enc(b[k + drop:]) != whole:
                return False
        return True

    inside = all(tokenizer.decode(enc(a) + enc(b)) == tokenizer.decode(enc(a + b))
                 for a, b in (("ab", "cd"), ("ab\n", "cd")))
    for before, drop in (("run", False), ("last", False), ("run", True)):
        if exact(before, int(drop)):
            return CutStyle(before, inside and not drop, drop)
    return None


def encode_document(tokenizer, text: str, style: CutStyle | None,
                    max_chars: int = MAX_CHARS) -> np.ndarray:
    """int32 BOS + ids(text) + EOS, encoded in pieces of about ``max_chars`` characters
    (``style=None``: whole)."""
    if style is None or len(text) <= max_chars:
        ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
        return np.asarray(ids, dtype=np.int32)
    bounds = [0, *split_points(text, max_chars, style.before, style.inside_words), len(text)]
    parts = [np.asarray([tokenizer.bos_id], np.int32)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if i and style.drop_space:
            a += 1  # the tokenizer puts the piece's leading space back
        parts.append(np.asarray(tokenizer.encode(text[a:b]), np.int32))
    parts.append(np.asarray([tokenizer.eos_id], np.int32))
    return np.concatenate(parts)
