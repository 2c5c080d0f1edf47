"""Pre-tokenized token cache: a corpus split encoded once, read as memory-mapped arrays.

One cache per (corpus fingerprint, split, tokenizer digest) lives under
``<data_dir>/token_cache/<key>/``. The split's documents, in corpus order, are cut into
shards of ``SHARD_DOCS`` documents; each shard is two ``.npy`` files written atomically
with a SHA-256 sidecar (kyx/fileio.py):

  shard_00003.tokens.npy   uint16 (uint32 for vocabularies over 65,536) BOS + ids + EOS
                           of each document, concatenated
  shard_00003.docs.npy     int64 token count of each document

``manifest.json`` (also checksummed) is written last and lists every shard's document and
token counts; a cache without it is unfinished, and building again only encodes the shards
that are missing or damaged (resumable after a kill). Shards are encoded by grain worker
processes (``workers``, default 2) with a progress bar; opening a cache verifies every
file's digest, then memory-maps the token arrays, so training reads tokens without
tokenizing and without holding the corpus in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import sys
import time

import numpy as np

from kyx.build_lock import exclusive_build
from kyx.data.corpus import Corpus, default_data_dir, fingerprint
from kyx.data.encode import ReadStats, Tokenize
from kyx.errors import DataError, IntegrityError
from kyx.fileio import DIGEST_SUFFIX, atomic_write, read_checked
from kyx.logs import get_logger

log = get_logger(__name__)

VERSION = 1
SHARD_DOCS = 256       # documents per shard: the unit of parallel work and of resuming
MANIFEST = "manifest.json"


def tokenizer_digest(tokenizer) -> str:
    """Digest of what decides a tokenizer's ids: a SentencePiece model's bytes, a
    tokenizer.json file's bytes, else the pickled tokenizer."""
    h = hashlib.sha256()
    proto = getattr(tokenizer, "model_proto", None)
    path = getattr(tokenizer, "path", "")
    if proto is not None:
        h.update(bytes(proto))
    elif path and os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
    else:
        h.update(pickle.dumps(tokenizer))
    h.update(json.dumps([tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]).encode())
    return h.hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def cache_dir(data_dir: str, corpus: Corpus, split: str, tokenizer) -> str:
    """Where the cache of ``split`` of ``corpus`` under ``tokenizer`` lives."""
    if not corpus.fingerprint:
        raise DataError(f"Corpus {corpus.name!r} has no fingerprint; it cannot be cached.")
    key = fingerprint([VERSION, corpus.fingerprint, split, tokenizer_digest(tokenizer)])
    name = "".join(c if c.isalnum() else "_" for c in f"{corpus.name}_{split}")[-40:]
    return os.path.join(data_dir or default_data_dir(), "token_cache", f"{name}_{key}")


def _shard_path(directory: str, i: int, what: str) -> str:
    ext = "json" if what == "summary" else "npy"
    return os.path.join(directory, f"shard_{i:05d}.{what}.{ext}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load_checked(path: str) -> np.ndarray:
    return np.load(io.BytesIO(read_checked(path)), allow_pickle=False)


def _shard_ok(directory: str, i: int) -> bool:
    """Both files of shard ``i`` exist with sidecars that match their bytes."""
    try:
        for what in ("tokens", "docs", "summary"):
            path = _shard_path(directory, i, what)
            if not os.path.exists(path + DIGEST_SUFFIX):
                return False
            read_checked(path)
        return True
    except (OSError, IntegrityError):
        return False


class EncodeShard:
    """Shard index -> {'shard', 'docs', 'tokens', 'skipped'}; writes the shard's two files.

    Picklable (the corpus source and the tokenizer travel to grain workers)."""

    def __init__(self, source, tokenizer, feature: str, directory: str, num_docs: int):
        self.source, self.tokenizer, self.feature = source, tokenizer, feature
        self.directory, self.num_docs = directory, num_docs
        self.dtype = token_dtype(tokenizer.vocab_size)

    def __call__(self, i: int) -> dict:
        stats = ReadStats()
        tokenize = Tokenize(self.tokenizer, self.feature, stats)
        docs = []
        for j in range(i * SHARD_DOCS, min((i + 1) * SHARD_DOCS, self.num_docs)):
            out = tokenize.map(self.source[j])
            if out is not None:
                docs.append(out["tokens"])
        tokens = np.concatenate(docs).astype(self.dtype) if docs else np.zeros(0, self.dtype)
        lengths = np.asarray([len(d) for d in docs], np.int64)
        atomic_write(_shard_path(self.directory, i, "tokens"), _npy_bytes(tokens),
                     durable=False, checksum=True)
        atomic_write(_shard_path(self.directory, i, "docs"), _npy_bytes(lengths),
                     durable=False, checksum=True)
        summary = {"docs": len(docs), "tokens": int(tokens.size), "skipped": dict(stats.counts)}
        atomic_write(_shard_path(self.directory, i, "summary"), json.dumps(summary),
                     durable=False, checksum=True)
        return summary


def _encode_missing(encode: EncodeShard, missing: list[int], workers: int):
    """Yields each missing shard's summary; grain worker processes when there are several."""
    if workers < 1 or len(missing) < 2:
        yield from map(encode, missing)
        return
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; keep their defaults
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.source(missing).map(encode).to_iter_dataset()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=min(workers, len(missing))))
    it = iter(ds)
    try:
        yield from it
    finally:
        if hasattr(it, "close"):
            it.close()


def build(corpus: Corpus, split: str, tokenizer, data_dir: str = "", workers: int = 2,
          progress: bool | None = None) -> str:
    """Encodes ``split`` of ``corpus`` into its cache unless it is complete; returns the
    cache directory. Complete shards of an interrupted build are kept."""
    directory = cache_dir(data_dir, corpus, split, tokenizer)
    if os.path.exists(os.path.join(directory, MANIFEST)):
        return directory
    with exclusive_build(directory, f"the token cache of {corpus.name}/{split}"):
        if not os.path.exists(os.path.join(directory, MANIFEST)):   # not built meanwhile
            _build(directory, corpus, split, tokenizer, workers, progress)
    return directory


def _build(directory: str, corpus: Corpus, split: str, tokenizer, workers: int,
           progress: bool | None) -> None:
    manifest = os.path.join(directory, MANIFEST)
    source = corpus.source(split)
    num_docs = len(source)
    if num_docs == 0:
        raise DataError(f"Split {split!r} of corpus {corpus.name!r} is empty.")
    os.makedirs(directory, exist_ok=True)
    num_shards = -(-num_docs // SHARD_DOCS)
    missing = [i for i in range(num_shards) if not _shard_ok(directory, i)]
    log.info("Token cache %s: encoding %d of %d shards (%d documents), %s", directory,
             len(missing), num_shards, num_docs,
             f"{min(workers, len(missing))} worker processes" if workers and len(missing) > 1
             else "in-process")
    encode = EncodeShard(source, tokenizer, corpus.text_feature, directory, num_docs)
    from tqdm.auto import tqdm

    start, new_tokens = time.perf_counter(), 0
    bar = tqdm(total=num_shards, initial=num_shards - len(missing), desc=f"tokenize {split}",
               unit="shard", disable=not sys.stderr.isatty() if progress is None else not progress)
    with bar:
        for summary in _encode_missing(encode, missing, workers):
            new_tokens += summary["tokens"]
            bar.update(1)
    seconds = time.perf_counter() - start
    shards = [json.loads(read_checked(_shard_path(directory, i, "summary")))
              for i in range(num_shards)]
    skipped = {k: sum(s["skipped"][k] for s in shards) for k in shards[0]["skipped"]}
    info = {"version": VERSION, "corpus": corpus.fingerprint, "split": split,
            "tokenizer": tokenizer_digest(tokenizer), "vocab_size": tokenizer.vocab_size,
            "dtype": token_dtype(tokenizer.vocab_size).name, "source_documents": num_docs,
            "documents": sum(s["docs"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards), "skipped": skipped,
            "shards": [{"docs": s["docs"], "tokens": s["tokens"]} for s in shards],
            "build_seconds": round(seconds, 2),
            "build_tokens_per_s": round(new_tokens / seconds) if new_tokens else None}
    atomic_write(manifest, json.dumps(info, indent=1), checksum=True)
    log.info("Token cache %s: %d documents, %d tokens (%.1f s)", directory, info["documents"],
             info["tokens"], seconds)


@dataclasses.dataclass
class TokenCache:
    """An opened cache: the split's tokens as one stream with document boundaries."""

    directory: str
    info: dict
    shards: list            # memory-mapped token arrays, one per shard
    shard_starts: np.ndarray  # int64 [num_shards + 1]: stream offset of each shard
    doc_starts: np.ndarray    # int64 [documents]: stream offset of each document's BOS

    @classmethod
    def open(cls, directory: str, verify: bool = True) -> TokenCache:
        """Opens a complete cache; with ``verify`` every file's digest is checked first."""
        try:
            info = json.loads(read_checked(os.path.join(directory, MANIFEST)))
        except FileNotFoundError:
            raise DataError(f"{directory} is not a finished token cache (no {MANIFEST}); "
                            f"run `kyx data prepare` or training again to build it.") from None
        shards, lengths = [], []
        for i in range(len(info["shards"])):
            path = _shard_path(directory, i, "tokens")
            if verify:
                read_checked(path)
            lengths.append(_load_checked(_shard_path(directory, i, "docs")))
            shards.append(np.load(path, mmap_mode="r"))
        sizes = np.asarray([s.size for s in shards], np.int64)
        shard_starts = np.concatenate([[0], np.cumsum(sizes)])
        doc_lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        doc_starts = np.concatenate([[0], np.cumsum(doc_lens)[:-1]]).astype(np.int64)
        if int(doc_lens.sum()) != int(shard_starts[-1]):
            raise IntegrityError(f"Token cache {directory}: document lengths do not add up "
                                 f"to the token count; delete the directory to rebuild it.")
        return cls(directory, info, shards, shard_starts, doc_starts)

    @property
    def num_tokens(self) -> int:
        return int(self.shard_starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream (across shards), as int32."""
        out = np.empty(length, np.int32)
        i = int(np.searchsorted(self.shard_starts, start, "right")) - 1
        done = 0
        while done < length:
            a = start + done - int(self.shard_starts[i])
            take = min(length - done, self.shards[i].size - a)
            out[done:done + take] = self.shards[i][a:a + take]
            done += take
            i += 1
        return out


def wait_for(directory: str, timeout_s: float = 6 * 3600, poll_s: float = 2.0) -> str:
    """Waits until another process (process 0) has finished the cache in ``directory``."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(os.path.join(directory, MANIFEST)):
        if time.monotonic() > deadline:
            raise DataError(f"Gave up after {timeout_s:.0f} s waiting for process 0 to build "
                            f"the token cache {directory}; is data_dir on a shared filesystem?")
        time.sleep(poll_s)
    return directory


def load(corpus: Corpus, split: str, tokenizer, data_dir: str = "", workers: int = 2,
         process_index: int = 0) -> TokenCache:
    """Builds (once; only process 0, the others wait for it) and opens the cache of ``split``."""
    if process_index == 0:
        directory = build(corpus, split, tokenizer, data_dir, workers)
    else:
        directory = wait_for(cache_dir(data_dir, corpus, split, tokenizer))
    return TokenCache.open(directory)
