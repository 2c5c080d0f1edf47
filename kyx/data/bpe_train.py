"""Byte-level BPE training, plain or Scaffold-BPE (Lian et al., arXiv 2404.17808).

Input: word counts (pre-tokenised text, kyx/data/pretokenize.py), words longer than
``MAX_WORD_BYTES`` counted as pieces of that length. Every word starts as its UTF-8 bytes
(token ids 0..255 of the expanded vocabulary E); each step merges the most frequent
adjacent pair over all words (weighted by word count) into a new token.

Data structures (incremental, so a step only touches the words holding its pair):

* ``pair_count``: pair -> occurrences, ``pair_words``: pair -> ids of word types that
  held it when it was counted (lazily pruned: a listed word may no longer hold it);
* ``count``: f(token), the occurrences of each token in the current segmentation;
* a lazy max-heap of candidates keyed (-count, kind, byte strings): an entry is pushed
  whenever a count changes, and a popped entry whose stored count differs from the
  current one is stale and skipped. Ties break deterministically: at equal counts a
  scaffold token's re-activation (kind 0) before a pair (kind 1), then the byte strings
  ascending (so the result does not depend on hashing or insertion order).

Scaffold-BPE (``scaffold=True``, ../shared/ALGORITHMS.md §4): after merging (a, b) into t
and updating every count, each non-byte child x in {a, b} still in V whose f(x) is below
the count of the heap's (fresh) head becomes a scaffold token: it leaves V (freeing a
slot), stays in E (later merges still use it as a stepping stone), and is pushed as a
token entry keyed by f(x). When such an entry reaches the head, x is re-activated (back
into V, one slot). A merge that re-creates an existing token string (e.g. "abc" from
(ab, c) and later from (a, bc)) records the merge and re-activates the token if it was a
scaffold. Training stops when |V| (bytes + learned tokens in V, scaffolds not counted)
reaches the target, or when no pair is left.
"""
from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping

from kyx.errors import ConfigError

NUM_BYTES = 256
# Training sees a longer word as pieces of this many bytes: a merge rescans each word
# holding its pair, so one huge word (a minified file, a DNA string) would cost
# O(length x merges); the pieces keep its pair statistics but for the cuts.
MAX_WORD_BYTES = 256
_TOKEN, _PAIR = 0, 1  # heap entry kinds; the lower one wins ties


@dataclasses.dataclass
class BpeModel:
    """What training produced: the merges in rank order and the final scaffold set.

    E ids: 0..255 are bytes; learned tokens take ids 256, 257, ... in order of creation
    (a merge re-creating an existing string maps to that string's id). ``scaffold`` is
    S = E minus V."""

    merges: list[tuple[int, int]]
    scaffold: frozenset[int] = frozenset()

    def expand(self) -> tuple[list[bytes], list[int]]:
        """(bytes of every E id, E id produced by each merge)."""
        pieces = [bytes([i]) for i in range(NUM_BYTES)]
        index = {p: i for i, p in enumerate(pieces)}
        produced = []
        for rank, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(pieces) and 0 <= b < len(pieces)):
                raise ValueError(f"merge {rank} ({a}, {b}) names a token made later or never")
            s = pieces[a] + pieces[b]
            if s not in index:
                index[s] = len(pieces)
                pieces.append(s)
            produced.append(index[s])
        return pieces, produced

    def vocab(self) -> list[int]:
        """E ids of V in id order (bytes first)."""
        pieces, _ = self.expand()
        return [i for i in range(len(pieces)) if i not in self.scaffold]


class _Trainer:
    """The merge loop's state (one training run)."""

    def __init__(self, word_counts: Mapping[str | bytes, int], scaffold: bool):
        self.scaffold = scaffold
        self.pieces: list[bytes] = [bytes([i]) for i in range(NUM_BYTES)]
        self.index: dict[bytes, int] = {p: i for i, p in enumerate(self.pieces)}
        self.count: list[int] = [0] * NUM_BYTES
        self.in_v: list[bool] = [True] * NUM_BYTES
        self.v_size = NUM_BYTES
        self.merges: list[tuple[int, int]] = []
        self.words: list[list[int]] = []
        self.freqs: list[int] = []
        self.pair_count: dict[tuple[int, int], int] = {}
        self.pair_words: dict[tuple[int, int], set[int]] = {}
        self.heap: list[tuple] = []
        # sorted: word ids, hence set iteration, do not depend on the mapping's order
        for raw, n in sorted(_pieces_of(word_counts).items()):
            if not raw or n <= 0:
                continue
            wid = len(self.words)
            symbols = list(raw)
            self.words.append(symbols)
            self.freqs.append(n)
            for s in symbols:
                self.count[s] += n
            for pair in zip(symbols, symbols[1:]):
                self.pair_count[pair] = self.pair_count.get(pair, 0) + n
                self.pair_words.setdefault(pair, set()).add(wid)
        for pair, n in self.pair_count.items():
            self._push_pair(pair, n)

    # ----------------------------------------------------------------- heap
    def _push_pair(self, pair, n):
        a, b = pair
        heapq.heappush(self.heap, (-n, _PAIR, self.pieces[a], self.pieces[b], a, b))

    def _push_token(self, x):
        heapq.heappush(self.heap, (-self.count[x], _TOKEN, self.pieces[x], b"", x, -1))

    def _fresh(self, entry) -> bool:
        neg, kind, _, _, a, b = entry
        if kind == _PAIR:
            return self.pair_count.get((a, b), 0) == -neg
        return not self.in_v[a] and self.count[a] == -neg and -neg > 0

    def _head(self):
        """The fresh head entry (stale ones dropped), or None."""
        while self.heap and not self._fresh(self.heap[0]):
            heapq.heappop(self.heap)
        return self.heap[0] if self.heap else None

    # ----------------------------------------------------------------- steps
    def _token_for(self, a, b) -> int:
        s = self.pieces[a] + self.pieces[b]
        t = self.index.get(s)
        if t is None:
            t = self.index[s] = len(self.pieces)
            self.pieces.append(s)
            self.count.append(0)
            self.in_v.append(True)
            self.v_size += 1
        elif not self.in_v[t]:   # a scaffold re-created by another pair: re-activated
            self.in_v[t] = True
            self.v_size += 1
        return t

    def merge(self, pair):
        a, b = pair
        t = self._token_for(a, b)
        self.merges.append(pair)
        changed: dict[tuple[int, int], None] = {}
        merged = 0
        pair_count, pair_words = self.pair_count, self.pair_words
        for wid in pair_words.pop(pair, ()):
            word, n = self.words[wid], self.freqs[wid]
            new, i, m, k = [], 0, 0, len(word)
            while i < k:
                if i + 1 < k and word[i] == a and word[i + 1] == b:
                    new.append(t)
                    i += 2
                    m += 1
                else:
                    new.append(word[i])
                    i += 1
            if not m:   # a stale listing: the word lost the pair to an earlier merge
                continue
            for p in zip(word, word[1:]):
                pair_count[p] -= n
                changed[p] = None
            for p in zip(new, new[1:]):
                pair_count[p] = pair_count.get(p, 0) + n
                changed[p] = None
                if p != pair:
                    pair_words.setdefault(p, set()).add(wid)
            self.words[wid] = new
            merged += m * n
        self.count[t] += merged
        self.count[a] -= merged
        self.count[b] -= merged
        for p in changed:
            n = pair_count.get(p, 0)
            if n > 0:
                self._push_pair(p, n)
            elif p in pair_count:
                del pair_count[p]
                pair_words.pop(p, None)
        for x in {a, b}:   # a scaffold child's key changed: push its current count
            if not self.in_v[x] and self.count[x] > 0:
                self._push_token(x)
        if self.scaffold:
            self._mark_scaffolds(a, b)

    def _mark_scaffolds(self, a, b):
        """After the counts are updated: children rarer than the new head leave V."""
        head = self._head()
        bar = -head[0] if head is not None else 0
        for x in sorted({a, b}):
            if x >= NUM_BYTES and self.in_v[x] and self.count[x] < bar:
                self.in_v[x] = False
                self.v_size -= 1
                if self.count[x] > 0:
                    self._push_token(x)

    def run(self, target: int) -> BpeModel:
        while self.v_size < target:
            head = self._head()
            if head is None:
                break
            heapq.heappop(self.heap)
            _, kind, _, _, a, b = head
            if kind == _PAIR:
                self.merge((a, b))
            else:   # a scaffold's own count beats every pair: back into V
                self.in_v[a] = True
                self.v_size += 1
        scaffold = frozenset(i for i, v in enumerate(self.in_v) if not v)
        return BpeModel(list(self.merges), scaffold)


def _pieces_of(word_counts: Mapping[str | bytes, int]) -> dict[bytes, int]:
    """Word bytes -> count, words longer than MAX_WORD_BYTES cut into pieces."""
    out: dict[bytes, int] = {}
    for word, n in word_counts.items():
        raw = word.encode("utf-8", "surrogatepass") if isinstance(word, str) else word
        for i in range(0, max(len(raw), 1), MAX_WORD_BYTES):
            piece = raw[i:i + MAX_WORD_BYTES]
            out[piece] = out.get(piece, 0) + n
    return out


def train_bpe_model(word_counts: Mapping[str | bytes, int], vocab_size: int, *,
                    scaffold: bool = False) -> BpeModel:
    """Merges until |V| (256 bytes + learned tokens in V) is ``vocab_size`` or no pair is
    left (a small corpus can stop short; the caller sees it in ``len(model.vocab())``)."""
    if vocab_size < NUM_BYTES:
        raise ConfigError(f"a byte-level BPE vocabulary holds the {NUM_BYTES} bytes; "
                          f"vocab_size={vocab_size} is too small")
    return _Trainer(word_counts, scaffold).run(vocab_size)
