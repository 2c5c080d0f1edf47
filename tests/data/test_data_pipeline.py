"""Grain pipeline: packing convention, determinism, resume from state, process splitting."""
import json

import numpy as np
import pytest

from kyx import data
from kyx.errors import ConfigError, DataError

KEYS = {"tokens", "targets", "segment_ids", "positions", "loss_mask"}


def check_batch(b, rows, seq_len, pad_id):
    """Asserts the documented packing convention on one batch."""
    assert set(b) == KEYS
    for k, v in b.items():
        assert v.shape == (rows, seq_len) and v.dtype == (np.float32 if k == "loss_mask" else np.int32)
    for seg, pos, tok, tgt, mask in zip(*(b[k] for k in ("segment_ids", "positions", "tokens",
                                                            "targets", "loss_mask"))):
        n = int((seg > 0).sum())
        assert (seg[:n] > 0).all() and (seg[n:] == 0).all(), "padding only at the end"
        if n:
            assert seg[0] == 1 and set(np.diff(seg[:n])) <= {0, 1}
            starts = np.flatnonzero(np.r_[True, seg[1:n] != seg[:n - 1]])
            expected_pos = np.arange(n) - starts[np.searchsorted(starts, np.arange(n), "right") - 1]
            np.testing.assert_array_equal(pos[:n], expected_pos)
        assert (pos[n:] == 0).all()
        same = np.r_[(seg[1:] == seg[:-1]) & (seg[1:] > 0), False]
        np.testing.assert_array_equal(mask, same.astype(np.float32))
        np.testing.assert_array_equal(tgt[same], tok[1:][same[:-1]])
        assert (tgt[~same] == pad_id).all() and (tok[n:] == pad_id).all()


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k])


def test_next_token_targets_hand_example():
    tokens = np.array([[5, 6, 7, 8, 9, 0]], np.int32)
    seg = np.array([[1, 1, 2, 2, 2, 0]], np.int32)
    targets, mask = data.next_token_targets(tokens, seg, pad_id=0)
    np.testing.assert_array_equal(targets, [[6, 0, 8, 9, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 0, 1, 1, 0, 0]])


def test_packing_hand_example(char_tokenizer, make_cfg, make_memory_corpus):
    # ids: 'a'..'h' -> 101..108, BOS = 2, EOS = 3; documents become BOS + text + EOS.
    corpus = make_memory_corpus([{"text": "ab"}, {"text": "cde"}, {"text": "fgh"}])
    cfg = make_cfg("/unused", seq_len=4, batch_size=2)
    batches = list(data.make_iterator(cfg, corpus, char_tokenizer, "validation"))
    assert len(batches) == 2
    b = {k: np.concatenate([x[k] for x in batches]) for k in KEYS}
    a, bb, c, d, e, f, g, h = range(101, 109)
    B, E = 2, 3
    np.testing.assert_array_equal(b["tokens"], [[B, a, bb, E], [B, c, d, e], [E, B, f, g], [h, E, 0, 0]])
    np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 1], [1, 1, 1, 1], [1, 2, 2, 2], [1, 1, 0, 0]])
    np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 0, 0]])
    np.testing.assert_array_equal(b["targets"], [[a, bb, E, 0], [c, d, e, 0], [0, f, g, 0], [E, 0, 0, 0]])
    np.testing.assert_array_equal(b["loss_mask"], [[1, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]])


def test_eval_pass_covers_validation_exactly(small_setup, make_cfg):
    cfg, corpus, tok = small_setup
    batches = list(data.make_iterator(cfg, corpus, tok, "validation"))
    for b in batches:
        check_batch(b, cfg.batch_size, cfg.seq_len, tok.pad_id)
    src = corpus.source(cfg.eval_split)
    expected = np.concatenate([[tok.bos_id] + tok.encode(src[i]["text"].decode()) + [tok.eos_id]
                               for i in range(len(src))])
    got = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
    np.testing.assert_array_equal(got, expected)
    cfg2 = make_cfg(cfg.data_dir, eval_batches=2)
    assert len(list(data.make_iterator(cfg2, corpus, tok, "validation"))) == 2


def test_train_batches_follow_convention_and_seed(small_setup, make_cfg):
    cfg, corpus, tok = small_setup
    first = take(data.make_iterator(cfg, corpus, tok), 6)
    for b in first:
        check_batch(b, cfg.batch_size, cfg.seq_len, tok.pad_id)
        assert (b["segment_ids"] > 0).all(), "training rows are fully packed"
    assert_same_batches(first, take(data.make_iterator(cfg, corpus, tok), 6))
    other = take(data.make_iterator(make_cfg(cfg.data_dir, seed=1), corpus, tok), 1)
    assert not np.array_equal(other[0]["tokens"], first[0]["tokens"])


def test_epochs_are_reshuffled_and_finite(char_tokenizer, make_cfg, make_memory_corpus):
    docs = [{"text": chr(ord("a") + i) * 2} for i in range(8)]
    cfg = make_cfg("/unused", seq_len=4, batch_size=1, num_epochs=2, sampling="packed")
    rows = [b["tokens"][0, 1] for b in data.make_iterator(cfg, make_memory_corpus(docs), char_tokenizer)]
    assert len(rows) == 16  # 2 epochs x 8 docs x 4 tokens (BOS + 2 chars + EOS) / 4 per row
    assert sorted(rows[:8]) == sorted(rows[8:]) and rows[:8] != rows[8:]


def test_resume_from_state_gives_identical_batches(small_setup):
    cfg, corpus, tok = small_setup
    it = data.make_iterator(cfg, corpus, tok)
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = take(it, 5)
    fresh = data.make_iterator(cfg, corpus, tok)
    fresh.set_state(state)
    assert_same_batches(take(fresh, 5), expected)


def test_processes_get_slices_of_the_global_batch(small_setup):
    cfg, corpus, tok = small_setup
    whole = take(data.make_iterator(cfg, corpus, tok), 3)
    parts = [take(data.make_iterator(cfg, corpus, tok, process_index=i, process_count=2), 3)
             for i in range(2)]
    for step in range(3):
        for k in KEYS:
            glued = np.concatenate([parts[0][step][k], parts[1][step][k]])
            np.testing.assert_array_equal(glued, whole[step][k])
    with pytest.raises(DataError, match="not divisible"):
        data.make_iterator(cfg, corpus, tok, process_count=3)
    with pytest.raises(DataError, match="process_index"):
        data.make_iterator(cfg, corpus, tok, process_index=2, process_count=2)


def test_malformed_records_are_skipped_and_counted(char_tokenizer, make_cfg, make_memory_corpus):
    docs = [{"text": b"good one"}, {"text": b"\xff\xfebad"}, {"text": b""}, {"text": "  \n"},
            {"text": "fine too"}]
    cfg = make_cfg("/unused", seq_len=4, batch_size=1)
    it = data.make_iterator(cfg, make_memory_corpus(docs), char_tokenizer, "validation")
    text = char_tokenizer.decode(np.concatenate([b["tokens"][0] for b in it]))
    assert text == "good onefine too"
    assert it.stats["skipped_while_reading"] == {"invalid_utf8": 1, "empty": 2}
    assert it.stats["corpus"] == {"in_memory": True}


def test_config_errors(small_setup, make_cfg):
    cfg, corpus, tok = small_setup
    with pytest.raises(ConfigError, match="split"):
        data.make_iterator(cfg, corpus, tok, "test")
    with pytest.raises(ConfigError, match="seq_len"):
        data.make_iterator(make_cfg(cfg.data_dir, seq_len=1), corpus, tok)


def test_worker_processes_match_in_process(small_setup, make_cfg):
    cfg, corpus, tok = small_setup
    packed = make_cfg(cfg.data_dir, sampling="packed")
    expected = take(data.make_iterator(packed, corpus, tok), 3)
    it = data.make_iterator(make_cfg(cfg.data_dir, sampling="packed", worker_count=1), corpus, tok)
    try:
        assert_same_batches(take(it, 3), expected)
    finally:
        it.close()


def test_stdlib_end_to_end(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, name="stdlib", max_files=40, seq_len=128, batch_size=8)
    corpus, tok = data.prepare(cfg)
    assert tok.vocab_size == 512 and corpus.stats["files_kept"] >= 30
    it = data.make_iterator(cfg, corpus, tok)
    b = next(it)
    check_batch(b, 8, 128, tok.pad_id)
    assert "\n" in tok.decode(b["tokens"][0])
    check_batch(next(data.make_iterator(cfg, corpus, tok, "validation")), 8, 128, tok.pad_id)
