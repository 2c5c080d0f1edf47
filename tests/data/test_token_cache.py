"""Token cache (kyx/data/token_cache.py) and i.i.d. windows (kyx/data/windows.py)."""
import json
import os

import numpy as np
import pytest

from kyx import data
from kyx.data import token_cache, windows
from kyx.errors import DataError, IntegrityError

KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


def docs_corpus(make_memory_corpus, n=12):
    """n distinct documents of varied length (3..25 characters)."""
    texts = [chr(ord("a") + i % 26) * (3 + (7 * i) % 23) + str(i) for i in range(n)]
    corpus = make_memory_corpus([{"text": t} for t in texts])
    corpus.fingerprint = f"memory-{n}"
    return corpus, texts


def stream(texts, tok):
    return np.concatenate([[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts])


def reference_segments(doc_ids):
    """segment_ids / positions from the document id of every token of a window."""
    seg = np.cumsum(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
    starts = np.flatnonzero(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
    pos = np.arange(len(doc_ids)) - starts[np.searchsorted(starts, np.arange(len(doc_ids)), "right") - 1]
    return seg, pos


def test_cache_holds_the_documents_and_resumes_missing_shards(tmp_path, monkeypatch,
                                                              char_tokenizer, make_memory_corpus):
    monkeypatch.setattr(token_cache, "SHARD_DOCS", 5)
    corpus, texts = docs_corpus(make_memory_corpus, 12)
    directory = token_cache.build(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    cache = token_cache.TokenCache.open(directory)
    assert len(cache.shards) == 3 and cache.info["documents"] == 12
    np.testing.assert_array_equal(cache.read(0, cache.num_tokens), stream(texts, char_tokenizer))
    lengths = [len(t) + 2 for t in texts]
    np.testing.assert_array_equal(cache.doc_starts, np.r_[0, np.cumsum(lengths)[:-1]])
    # an interrupted build: no manifest, one shard lost -> only that shard is encoded again
    kept = os.path.join(directory, "shard_00000.tokens.npy")
    before = os.stat(kept).st_mtime_ns
    os.unlink(os.path.join(directory, token_cache.MANIFEST))
    os.unlink(os.path.join(directory, "shard_00001.tokens.npy"))
    token_cache.build(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    assert os.stat(kept).st_mtime_ns == before
    again = token_cache.TokenCache.open(directory)
    np.testing.assert_array_equal(again.read(0, again.num_tokens), stream(texts, char_tokenizer))
    # a damaged shard is an error on open, naming the file
    with open(os.path.join(directory, "shard_00002.tokens.npy"), "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    with pytest.raises(IntegrityError, match="shard_00002"):
        token_cache.TokenCache.open(directory)


def test_window_segments_at_document_boundaries(tmp_path, char_tokenizer, make_memory_corpus):
    corpus, texts = docs_corpus(make_memory_corpus, 12)
    cache = token_cache.load(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    doc_of_token = np.repeat(np.arange(12), [len(t) + 2 for t in texts])
    L = 16
    it = windows.WindowIterator(cache, L, 4, seed=0, pad_id=0)
    continued = 0
    for w in range(it.num_windows):
        b = it.rows([w])
        ids = doc_of_token[w * L:(w + 1) * L]
        seg, pos = reference_segments(ids)
        np.testing.assert_array_equal(b["segment_ids"][0], seg)
        np.testing.assert_array_equal(b["positions"][0], pos)
        same = np.r_[ids[1:] == ids[:-1], False]
        np.testing.assert_array_equal(b["loss_mask"][0], same.astype(np.float32))
        np.testing.assert_array_equal(b["targets"][0][same], b["tokens"][0][1:][same[:-1]])
        starts_mid = w * L not in cache.doc_starts
        assert starts_mid == (b["tokens"][0, 0] != char_tokenizer.bos_id)
        continued += starts_mid
    assert 0 < continued < it.num_windows


@pytest.mark.parametrize("strata", [1, 4])
def test_every_window_once_per_epoch_and_processes_disjoint(tmp_path, char_tokenizer,
                                                            make_memory_corpus, strata):
    corpus, _ = docs_corpus(make_memory_corpus, 40)
    cache = token_cache.load(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    L, B = 8, 4
    whole = windows.WindowIterator(cache, L, B, seed=3, pad_id=0, num_epochs=2, strata=strata)
    n = whole.num_windows
    rows = [whole.window(r) for r in range(2 * n)]
    assert sorted(rows[:n]) == list(range(n)) == sorted(rows[n:]) and rows[:n] != rows[n:]
    batches = list(whole)
    assert len(batches) == (2 * n) // B
    expected = np.stack([cache.read(w * L, L) for w in rows[:len(batches) * B]])
    np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in batches]), expected)
    parts = [list(windows.WindowIterator(cache, L, B, seed=3, pad_id=0, num_epochs=2,
                                         process_index=p, process_count=2, strata=strata))
             for p in range(2)]
    for k, b in enumerate(batches):
        for key in KEYS:
            np.testing.assert_array_equal(np.concatenate([parts[0][k][key], parts[1][k][key]]),
                                          b[key])
    # the windows each process read in epoch 0 (its rows hold exactly those tokens)
    mine = [[rows[k * B + p * (B // 2) + j] for k in range(n // B) for j in range(B // 2)]
            for p in range(2)]
    for p in range(2):
        got = np.concatenate([b["tokens"] for b in parts[p][:n // B]])
        np.testing.assert_array_equal(got, np.stack([cache.read(w * L, L) for w in mine[p]]))
    assert not set(mine[0]) & set(mine[1]), "two processes got the same row"


@pytest.mark.parametrize("strata", [1, 4])
def test_resume_is_exact_and_state_is_checked(tmp_path, char_tokenizer, make_memory_corpus,
                                              strata):
    corpus, _ = docs_corpus(make_memory_corpus, 40)
    cache = token_cache.load(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    it = windows.WindowIterator(cache, 8, 4, seed=1, pad_id=0, strata=strata)
    for _ in range(it.num_windows // 4 + 3):  # past an epoch end
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state["epoch"] == 1
    expected = [next(it) for _ in range(4)]
    fresh = windows.WindowIterator(cache, 8, 4, seed=1, pad_id=0, strata=strata)
    fresh.set_state(state)
    for x, y in zip(expected, [next(fresh) for _ in range(4)]):
        for key in KEYS:
            np.testing.assert_array_equal(x[key], y[key])
    with pytest.raises(DataError, match="seq_len"):
        windows.WindowIterator(cache, 16, 4, seed=1, pad_id=0, strata=strata).set_state(state)
    other = 5 - strata  # iid <-> stratified (or another batch size): not this data order
    with pytest.raises(DataError, match="data.sampling"):
        windows.WindowIterator(cache, 8, 4, seed=1, pad_id=0, strata=other).set_state(state)


def reference_surprise(tokens_wl):
    """Mean -log unigram frequency per window, by plain counting."""
    from collections import Counter
    counts = Counter(tokens_wl.ravel().tolist())
    total = tokens_wl.size
    return np.array([np.mean([-np.log(counts[t] / total) for t in row]) for row in tokens_wl])


def test_stratified_batches_hold_one_window_of_every_difficulty_stratum(
        tmp_path, char_tokenizer, make_memory_corpus):
    # easy (one repeated letter) and hard (varied letters) documents, interleaved
    texts = [("q" * 40 if i % 2 else "".join(chr(97 + (i * j * 7 + j) % 26) for j in range(40)))
             for i in range(60)]
    corpus = make_memory_corpus([{"text": t} for t in texts])
    corpus.fingerprint = "memory-easy-hard"
    cache = token_cache.load(corpus, "train", char_tokenizer, str(tmp_path), workers=0)
    L, B = 8, 4
    strat = windows.WindowIterator(cache, L, B, seed=5, pad_id=0, strata=B)
    n = strat.num_windows
    key = reference_surprise(cache.read(0, n * L).reshape(n, L))
    np.testing.assert_allclose(windows.unigram_surprise(cache, L, n, chunk_windows=7), key,
                               rtol=1e-12)
    assert np.all(np.diff(key[strat.ranking]) >= -1e-12)  # the ranking sorts by difficulty
    stratum = np.empty(n, int)
    stratum[strat.ranking] = np.arange(n) * B // n
    for epoch in range(2):
        rows = [strat.window(epoch * n + r) for r in range(n)]
        assert sorted(rows) == list(range(n))
        full = B * (n // B)
        for start in range(full - B + 1):  # any B consecutive rows, not only aligned batches
            assert sorted(stratum[rows[start:start + B]]) == list(range(B)), (epoch, start)
    # the point of it: the batch-mean difficulty varies far less than with i.i.d. rows
    iid = windows.WindowIterator(cache, L, B, seed=5, pad_id=0)
    spread = {name: np.std([key[[it.window(r) for r in range(k * B, (k + 1) * B)]].mean()
                            for k in range(n // B)])
              for name, it in (("iid", iid), ("stratified", strat))}
    assert spread["stratified"] < 0.5 * spread["iid"], spread


def test_stratified_windows_are_the_default_training_sampler(small_setup, make_cfg):
    cfg, corpus, tok = small_setup
    assert cfg.sampling == "stratified"
    it = data.make_iterator(cfg, corpus, tok)
    assert isinstance(it, windows.WindowIterator) and it.stats["cache"]["documents"] > 0
    assert it.strata == cfg.batch_size and it.get_state()["sampling"] == "stratified"
    packed = data.make_iterator(make_cfg(cfg.data_dir, sampling="packed", name=cfg.name,
                                         path=cfg.path), corpus, tok)
    assert isinstance(packed, data.BatchIterator)
