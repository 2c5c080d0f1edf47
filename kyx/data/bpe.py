"""Byte-level BPE tokenizers (``data.tokenizer.kind = "bpe" | "scaffold_bpe"``).

``BpeTokenizer`` implements kyx's Tokenizer protocol over a model trained by
kyx/data/bpe_train.py, with the id layout of kyx's SentencePiece tokenizers: pad=0,
unk=1, bos=2, eos=3, the chat control pieces (ids 4..7), the LUD placeholder (id 8), the
256 bytes (ids 9..264), then the learned tokens of V in order of creation. Control pieces
are never produced by ``encode`` (the text "<|user|>" stays text); the chat template
inserts their ids.

Encoding a word (pre-tokenised as in training): rank-ordered BPE with every merge of the
expanded vocabulary E (scaffold tokens are stepping stones to longer tokens), then each
token not in V is demolished into its recorded pair, recursively, down to tokens in V
(with several recorded pairs, the one giving fewest tokens; then the earliest). Words of
up to 256 characters are cached; words over 64 bytes merge through a heap (O(n log n),
the same result), so one huge word cannot stall the data pipeline. Decoding concatenates
bytes; only the final UTF-8 decode replaces invalid bytes.

The model is one JSON file (merges in rank order, the scaffold ids, the pre-tokeniser
options) written with a SHA-256 sidecar and checked when read (ids, pairs, options: a
damaged file is a DataError); ``train_bpe`` caches trained models under the
data directory by a fingerprint of the training text and options.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterable, Sequence

from kyx.data.bpe_train import NUM_BYTES, BpeModel, train_bpe_model
from kyx.data.pretokenize import PreTokenizer
from kyx.data.tokenizer import (BOS_ID, CHAT_TOKENS, EOS_ID, PAD_ID, PLACEHOLDER, UNK_ID)
from kyx.errors import ConfigError, DataError, IntegrityError
from kyx.fileio import atomic_write, read_checked
from kyx.logs import get_logger

log = get_logger(__name__)

FORMAT, VERSION = "kyx-bpe", 1
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", *CHAT_TOKENS, PLACEHOLDER)  # ids 0..8
FIRST_BYTE = len(SPECIALS)
CACHE_WORDS = 1 << 18   # per-tokenizer word cache entries (then words are not cached)
CACHE_WORD_CHARS = 256  # longer words are not cached (rarely repeated; bounds the memory)
LONG_WORD = 64          # longer words merge through a heap: O(n log n), not O(n * merges)


class BpeTokenizer:
    """A byte-level (Scaffold-)BPE model; picklable (it travels as its JSON text)."""

    def __init__(self, data: bytes | str, path: str = ""):
        self.path = path
        self._json = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        try:
            spec = json.loads(self._json)
            if not isinstance(spec, dict) or spec.get("format") != FORMAT or \
                    spec.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} file")
            self.scaffold = bool(spec["scaffold"])
            self.pretokenizer = PreTokenizer(**spec["pretokenizer"])
            model = BpeModel([_merge(m, r) for r, m in enumerate(spec["merges"])],
                             frozenset(_token_id(x) for x in spec["scaffold_tokens"]))
            model.expand()   # every merge names tokens that exist by then
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path or 'BPE tokenizer'}: not a valid kyx BPE tokenizer file "
                            f"({e}); train it again") from None
        self.model = model
        self._build(model)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _build(self, model: BpeModel) -> None:
        pieces, produced = model.expand()
        self._pieces = pieces
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        parts: dict[int, list[tuple[int, int, int]]] = {}
        for rank, ((a, b), t) in enumerate(zip(model.merges, produced)):
            self._ranks.setdefault((a, b), (rank, t))
            parts.setdefault(t, []).append((rank, a, b))
        bad = [x for x in model.scaffold if x < NUM_BYTES or x >= len(pieces)]
        if bad:
            raise DataError(f"{self.path or 'BPE tokenizer'}: scaffold ids {sorted(bad)[:5]} are "
                            f"bytes or unknown tokens; train it again")
        self._dense = {}   # E id -> model id (V only)
        for e in range(len(pieces)):
            if e not in model.scaffold:
                self._dense[e] = FIRST_BYTE + len(self._dense)
        self._id_bytes = [b""] * FIRST_BYTE + [pieces[e] for e in self._dense]
        # demolition: every E id -> model ids; components are shorter, so go by length
        self._demolish: dict[int, tuple[int, ...]] = {}
        for e in sorted(range(len(pieces)), key=lambda i: (len(pieces[i]), i)):
            if e in self._dense:
                self._demolish[e] = (self._dense[e],)
            else:
                self._demolish[e] = min(
                    (self._demolish[a] + self._demolish[b] for _, a, b in sorted(parts[e])),
                    key=len)

    # ------------------------------------------------------------------ protocol
    def __getstate__(self):
        return {"json": self._json, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["json"], state["path"])

    @property
    def model_json(self) -> bytes:
        """The tokenizer file's bytes."""
        return self._json

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    @property
    def id_bytes(self) -> tuple[bytes, ...]:
        """The bytes each id decodes to (b"" for the special ids), indexed by id."""
        return tuple(self._id_bytes)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, text: str) -> list[int]:
        cache, out = self._cache, []
        for word in self.pretokenizer.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._encode_word(word)
                if len(cache) < CACHE_WORDS and len(word) <= CACHE_WORD_CHARS:
                    cache[word] = ids
            out.extend(ids)
        return out

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        table, n = self._id_bytes, len(self._id_bytes)
        return b"".join(table[i] for i in map(int, ids) if 0 <= i < n).decode(
            "utf-8", "replace")

    def id_to_piece(self, i: int) -> str:
        """The piece of id ``i``: a special's text, ``<0xNN>`` for a byte (as SentencePiece
        names them), else the token's text (invalid UTF-8 backslash-escaped)."""
        i = int(i)
        if i < FIRST_BYTE:
            return SPECIALS[i]
        if i < FIRST_BYTE + NUM_BYTES:
            return f"<0x{i - FIRST_BYTE:02X}>"
        return self._id_bytes[i].decode("utf-8", "backslashreplace")

    def special_id(self, piece: str) -> int | None:
        """Id of a special piece such as "<|user|>", else None (as SentencePiece: unk too)."""
        i = SPECIALS.index(piece) if piece in SPECIALS else None
        return None if i == UNK_ID else i

    def special_ids(self) -> dict[str, int]:
        """Text -> id of every special piece (what encode_with_special_tokens matches)."""
        return {p: i for i, p in enumerate(SPECIALS)}

    # ------------------------------------------------------------------ encoding
    def _encode_word(self, word: str) -> tuple[int, ...]:
        syms, demolish = self._bpe(word), self._demolish
        if len(syms) == 1:
            return demolish[syms[0]]
        return tuple(i for s in syms for i in demolish[s])

    def _bpe(self, word: str) -> list[int]:
        """E ids of ``word``: every merge applied in rank order (no demolition): the
        lowest-ranked adjacent pair, all its occurrences left to right, then again."""
        syms = list(word.encode("utf-8", "surrogatepass"))
        if len(syms) > LONG_WORD:
            return self._bpe_heap(syms)
        ranks = self._ranks
        while len(syms) > 1:
            best = None
            for pair in zip(syms, syms[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r < best):
                    best = r
            if best is None:
                break
            rank, t = best
            a, b = self.model.merges[rank]
            new, i, k = [], 0, len(syms)
            while i < k:
                if i + 1 < k and syms[i] == a and syms[i + 1] == b:
                    new.append(t)
                    i += 2
                else:
                    new.append(syms[i])
                    i += 1
            syms = new
        return syms

    def _bpe_heap(self, syms: list[int]) -> list[int]:
        """``_bpe`` for long words, the same result in O(n log n): symbols in a linked
        list, a heap of (rank, position) of adjacent pairs; each round pops every
        occurrence of the lowest rank and merges them left to right (a pair made during
        the round waits for the next one, as in ``_bpe``)."""
        ranks, merges = self._ranks, self.model.merges
        n = len(syms)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        alive = [True] * n
        heap = [(ranks[p][0], i) for i, p in enumerate(zip(syms, syms[1:])) if p in ranks]
        heapq.heapify(heap)

        def push(i):
            j = nxt[i]
            if 0 <= i and j < n:
                r = ranks.get((syms[i], syms[j]))
                if r is not None:
                    heapq.heappush(heap, (r[0], i))
        while heap:
            rank = heap[0][0]
            (a, b), t = merges[rank], ranks[merges[rank]][1]
            starts = []
            while heap and heap[0][0] == rank:
                starts.append(heapq.heappop(heap)[1])
            for i in sorted(set(starts)):   # left to right; a consumed symbol is skipped
                j = nxt[i]
                if not alive[i] or syms[i] != a or j >= n or syms[j] != b:
                    continue
                syms[i], alive[j] = t, False
                nxt[i] = nxt[j]
                if nxt[j] < n:
                    prv[nxt[j]] = i
            for i in sorted(set(starts)):
                if alive[i] and syms[i] == t:
                    push(prv[i])
                    push(i)
        return [syms[i] for i in range(n) if alive[i]]

    def expanded_tokens(self, text: str) -> list[bytes]:
        """The E tokens of ``text`` before demolition (for tests and analysis)."""
        return [self._pieces[e] for word in self.pretokenizer.split(text)
                for e in self._bpe(word)]

    # ------------------------------------------------------------------ files
    def save(self, path: str) -> str:
        """Writes the tokenizer file (+ its SHA-256 sidecar)."""
        return atomic_write(path, self._json, checksum=True)

    @classmethod
    def from_file(cls, path: str) -> BpeTokenizer:
        """Loads a tokenizer file; a damaged file is an IntegrityError (digest) or a
        DataError (content)."""
        try:
            raw = read_checked(path)
        except IntegrityError as e:
            raise IntegrityError(f"BPE tokenizer {path!r} is damaged: {e}") from None
        except OSError as e:
            raise ConfigError(f"Cannot read BPE tokenizer {path!r}: {e}") from None
        return cls(raw, path=path)


def _token_id(x) -> int:
    if type(x) is not int or x < 0:
        raise ValueError(f"{x!r} is not a token id")
    return x


def _merge(m, rank: int) -> tuple[int, int]:
    if not isinstance(m, list) or len(m) != 2:
        raise ValueError(f"merge {rank} is {m!r}, not a pair of token ids")
    return _token_id(m[0]), _token_id(m[1])


def to_json(model: BpeModel, scaffold: bool, pretokenizer: PreTokenizer) -> bytes:
    """The tokenizer file's bytes: the same model gives the same bytes."""
    spec = {"format": FORMAT, "version": VERSION, "scaffold": scaffold,
            "pretokenizer": pretokenizer.to_dict(), "specials": list(SPECIALS),
            "merges": [list(m) for m in model.merges],
            "scaffold_tokens": sorted(model.scaffold)}
    return (json.dumps(spec, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _sample(texts: Iterable[str], max_bytes: int) -> list[str]:
    out, total = [], 0
    for text in texts:
        out.append(text)
        total += len(text.encode("utf-8", "surrogatepass"))
        if total >= max_bytes:
            break
    return out


def fingerprint(texts: Sequence[str], options: dict, corpus_id: str = "") -> str:
    """Hash of the training text and every option that changes the model."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "v": VERSION, "opts": options, "corpus": corpus_id},
                        sort_keys=True).encode())
    for s in texts:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def train_bpe(texts: Iterable[str], *, vocab_size: int, scaffold: bool = False,
              split_digits: bool = True, whitespace: str = "runs",
              cache_dir: str | None = None, corpus_id: str = "",
              max_bytes: int = 8 << 20) -> BpeTokenizer:
    """Trains (or loads from ``cache_dir``) a byte-level BPE tokenizer of ``vocab_size``
    ids (9 special + 256 bytes + learned) on up to ``max_bytes`` of ``texts``."""
    if vocab_size <= FIRST_BYTE + NUM_BYTES:
        raise ConfigError(f"tokenizer.vocab_size={vocab_size} is too small: {FIRST_BYTE} "
                          f"special and {NUM_BYTES} byte ids come first (e.g. use 4096).")
    pretokenizer = PreTokenizer(split_digits=split_digits, whitespace=whitespace)
    sample = _sample(texts, max_bytes)
    if not any(sample):
        raise DataError("No text to train the tokenizer on: the training split is empty"
                        + (" (its texts are all empty)." if sample else "."))
    options = {"vocab": vocab_size, "scaffold": scaffold, **pretokenizer.to_dict()}
    key = fingerprint(sample, options, corpus_id)
    kind = "scaffold_bpe" if scaffold else "bpe"
    path = os.path.join(cache_dir, f"{kind}{vocab_size}_{key}.json") if cache_dir else ""
    if path and os.path.exists(path):
        log.info("Loading cached tokenizer %s", path)
        try:
            return BpeTokenizer.from_file(path)
        except (IntegrityError, DataError) as e:  # a cache: rebuild it rather than stop
            log.warning("%s; training the tokenizer again", e)
    log.info("Training %s tokenizer: vocab %d, %d texts", kind, vocab_size, len(sample))
    model = train_bpe_model(pretokenizer.count(sample), vocab_size - FIRST_BYTE,
                            scaffold=scaffold)
    have = FIRST_BYTE + len(model.vocab())
    if have < vocab_size:
        log.warning("The tokenizer's training text ran out of pairs: %d ids instead of "
                    "data.tokenizer.vocab_size=%d", have, vocab_size)
    data = to_json(model, scaffold, pretokenizer)
    if path:
        atomic_write(path, data, checksum=True)
    return BpeTokenizer(data, path=path)
