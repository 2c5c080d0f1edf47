"""Document deduplication at corpus build time (Baichuan 2, section 2.1): exact and near.

* **Exact**: documents whose normalised text (NFKC, lower case, runs of whitespace made one
  space, stripped) has the same SHA-256 are one document.
* **Near**: MinHash signatures (``datasketch``, ``num_perm`` permutations) of the sets of
  ``shingle``-word shingles of the normalised text, indexed by LSH for an estimated
  Jaccard similarity of at least ``threshold``; a candidate pair counts when the
  signatures' estimated Jaccard is >= ``threshold`` too (LSH banding alone lets some pairs
  below it through). Defaults: 5-word shingles, 128 permutations, threshold 0.8, i.e.
  documents sharing >= 80% of their 5-word shingles. Documents with fewer than
  ``shingle`` words are only deduplicated exactly.

Documents are visited in the given order and the first of each group is kept, so the result
does not depend on anything but the documents and their order (callers pass paths sorted).
"""
from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib
from collections.abc import Sequence

import ml_collections
import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]+")
_MULT = 1_000_003  # shingle hash: polynomial in the word hashes, mod 2**32


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.exact = True
    c.near = True
    c.threshold = 0.8   # estimated Jaccard similarity of shingle sets that counts as a duplicate
    c.num_perm = 128    # MinHash permutations
    c.shingle = 5       # words per shingle
    return c


def normalise(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8", "surrogatepass")).hexdigest()


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the distinct ``n``-word shingles of the normalised text (words and
    punctuation runs): CRC-32 per word, combined polynomially per shingle in numpy (no
    Python-level work per shingle, which is what made hashing each shingle string slow)."""
    words = _WORD.findall(normalise(text))
    if len(words) < n:
        return np.zeros(0, np.uint64)
    w = np.fromiter((zlib.crc32(x.encode("utf-8", "surrogatepass")) for x in words),
                    np.uint64, len(words))
    h = np.zeros(len(words) - n + 1, np.uint64)
    for k in range(n):
        h = (h * np.uint64(_MULT) + w[k:len(w) - n + 1 + k]) & np.uint64(0xFFFFFFFF)
    return np.unique(h)


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    return a, rng.integers(0, 2**63, num_perm, dtype=np.uint64)


def signature(hashes: np.ndarray, num_perm: int, rows: int = 4096) -> np.ndarray:
    """MinHash signature (uint64 [num_perm]): per permutation the minimum of the
    multiply-shift hash ``(a * h + b mod 2**64) >> 32`` over the shingle hashes. Wrapping
    uint64 arithmetic in numpy; 3-4x faster than datasketch's per-item update_batch
    (a mod by a Mersenne prime and a Python call per item)."""
    a, b = _permutations(num_perm)
    out = np.full(num_perm, np.iinfo(np.uint64).max, np.uint64)
    for i in range(0, hashes.size, rows):
        h = hashes[i:i + rows, None]
        np.minimum(out, ((h * a + b) >> np.uint64(32)).min(axis=0), out=out)
    return out


def minhash(text: str, cfg):
    """The MinHash of a text's shingles as a datasketch ``LeanMinHash`` (what its LSH
    index takes), or None for texts shorter than a shingle."""
    from datasketch import LeanMinHash

    hashes = shingle_hashes(text, cfg.shingle)
    if not hashes.size:
        return None
    return LeanMinHash(seed=1, hashvalues=signature(hashes, cfg.num_perm))


def duplicates(texts: Sequence[str], cfg) -> dict[int, tuple[str, int]]:
    """{index: ('exact' | 'near', index of the kept document it duplicates)}."""
    dropped: dict[int, tuple[str, int]] = {}
    if cfg.exact:
        first: dict[str, int] = {}
        for i, text in enumerate(texts):
            j = first.setdefault(exact_key(text), i)
            if j != i:
                dropped[i] = ("exact", j)
    if cfg.near:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        signatures = {}
        for i, text in enumerate(texts):
            if i in dropped:
                continue
            m = minhash(text, cfg)
            if m is None:
                continue
            near = [j for j in lsh.query(m) if m.jaccard(signatures[j]) >= cfg.threshold]
            if near:
                dropped[i] = ("near", min(near))
                continue
            lsh.insert(i, m)
            signatures[i] = m
    return dropped


def summary(dropped: dict[int, tuple[str, int]], names: Sequence[str],
            listed: int = 20) -> dict:
    """Counts and the first pairs (dropped, kept) for corpus stats."""
    out = {"dedup_exact": 0, "dedup_near": 0}
    pairs = []
    for i, (kind, j) in sorted(dropped.items()):
        out[f"dedup_{kind}"] += 1
        if len(pairs) < listed:
            pairs.append([names[i], names[j], kind])
    out["dedup_examples"] = pairs
    return out


def keep_mask(n: int, dropped: dict) -> np.ndarray:
    mask = np.ones(n, bool)
    mask[list(dropped)] = False
    return mask
