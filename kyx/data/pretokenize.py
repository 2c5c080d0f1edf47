"""Pre-tokenisation of byte-level BPE: text cut into "words" that merges never cross.

The pattern is GPT-4's / Llama 3's (contractions, a letter run with one leading
non-letter, numbers, punctuation runs, newline runs, whitespace runs that leave their last
space to the next word), with two options:

* ``split_digits`` (default True, Baichuan 2): every digit is its own word, so numbers are
  spelled digit by digit and no vocabulary slot goes to arbitrary digit groups;
* ``whitespace``: ``"runs"`` (default, Baichuan 2's whitespace-only pieces: a run of
  spaces, e.g. code indentation, can become one token) or ``"single"`` (every whitespace
  character is a word of its own, except one space joining the next word).

The alternatives cover every character, so the words concatenate back to the text: BPE
over them round-trips exactly.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

import regex

from kyx.errors import ConfigError

WHITESPACE = ("runs", "single")


@dataclasses.dataclass(frozen=True)
class PreTokenizer:
    """The word splitter of a BPE tokenizer (its options travel in the tokenizer file)."""

    split_digits: bool = True
    whitespace: str = "runs"

    def __post_init__(self):
        if self.whitespace not in WHITESPACE:
            raise ConfigError(f"data.tokenizer.whitespace must be one of {WHITESPACE}, "
                              f"got {self.whitespace!r}")

    @property
    def pattern(self) -> str:
        digits = r"\p{N}" if self.split_digits else r"\p{N}{1,3}"
        space = (r"\s*[\r\n]+|\s+(?!\S)|\s+" if self.whitespace == "runs" else r"\s")
        return (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits
                + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|" + space)

    @property
    def regex(self) -> regex.Pattern:
        return _compiled(self.pattern)

    def split(self, text: str) -> list[str]:
        """The words of ``text`` (their concatenation is ``text``)."""
        return self.regex.findall(text)

    def count(self, texts: Iterable[str]) -> Counter:
        """Word -> occurrences over ``texts`` (the trainer's input)."""
        counts: Counter = Counter()
        findall = self.regex.findall
        for text in texts:
            counts.update(findall(text))
        return counts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CACHE: dict[str, regex.Pattern] = {}


def _compiled(pattern: str) -> regex.Pattern:
    if pattern not in _CACHE:
        _CACHE[pattern] = regex.compile(pattern)
    return _CACHE[pattern]
