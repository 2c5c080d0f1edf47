"""Byte-level BPE under hostile input (kyx/data/bpe.py, bpe_train.py): edge texts, huge
words (encoder heap path, training cut), damaged tokenizer files, unusable settings."""
import json
import os

import numpy as np
import pytest

from kyx.data import bpe, bpe_train, hf_tokenizer
from kyx.data.bpe_train import NUM_BYTES, train_bpe_model
from kyx.errors import ConfigError, DataError

STDLIB = os.path.dirname(os.__file__)


@pytest.fixture(scope="module")
def texts():
    return [open(os.path.join(STDLIB, n), encoding="utf-8").read()
            for n in ("textwrap.py", "heapq.py", "shlex.py")]


@pytest.fixture(scope="module")
def toks(texts):
    return {sc: bpe.train_bpe(texts, vocab_size=800, scaffold=sc) for sc in (False, True)}


@pytest.mark.parametrize("scaffold", [False, True])
def test_edge_texts_round_trip(toks, scaffold):
    tok = toks[scaffold]
    for text in ["", "\r\n", "a\r\nb\r\n\r\n", "\r", "\x00", "\x00\x00a\x00b", "\u0085\u2028",
                 "0123456789" * 20, " " * 1000, "\t\r\n" * 50, "<s></s><|user|>"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and all(9 <= i < tok.vocab_size for i in ids)
    assert tok.encode("") == [] and len(tok.encode("0123456789" * 3)) == 30


@pytest.mark.parametrize("scaffold", [False, True])
def test_long_words_merge_through_the_heap_identically(toks, texts, scaffold, monkeypatch):
    tok = toks[scaffold]
    rng = np.random.default_rng(0)
    words = [w for t in texts for w in tok.pretokenizer.split(t)]
    samples = ["a" * 300, "ab" * 200, "aab" * 100]
    for _ in range(150):
        w = "".join(rng.choice(words, int(rng.integers(1, 80))))
        samples.append(w.replace(" ", "") if rng.random() < 0.5 else w)
    heap = [tok._bpe_heap(list(w.encode("utf-8"))) for w in samples]
    monkeypatch.setattr(bpe, "LONG_WORD", 1 << 30)     # the plain loop for every length
    assert [tok._bpe(w) for w in samples] == heap


def test_huge_word_is_fast_and_not_cached(toks, texts):
    tok = toks[True]
    letters = [w for t in texts for w in tok.pretokenizer.split(t) if w.isalpha()]
    word = "".join(np.random.default_rng(1).choice(letters, 40000))[:200_000]
    ids = tok.encode(word)   # through the heap (~0.6 s; the plain loop: minutes)
    assert tok.decode(ids) == word and word not in tok._cache


def test_training_cuts_huge_words(texts):
    """A merge rescans every word holding its pair: 100 KB of letters as one word took
    31 s for 1000 merges uncut, 3 s cut (measured); here 300 merges on 50 KB."""
    word = "".join(c for c in "".join(texts) if c.isalpha())[:50_000]
    trainer = bpe_train._Trainer({word: 3, "xy": 1}, scaffold=True)
    assert max(map(len, trainer.words)) == bpe_train.MAX_WORD_BYTES
    model = train_bpe_model({word: 3, "xy": 1}, NUM_BYTES + 300, scaffold=True)
    assert len(model.vocab()) == NUM_BYTES + 300
    cut = bpe_train._pieces_of({"ab" * 300: 2, "c": 1})
    assert cut == {b"ab" * 128: 4, b"ab" * 44: 2, b"c": 1}


@pytest.mark.parametrize("damage", [
    lambda s: s["merges"].insert(0, [400, 5]),        # a token made later
    lambda s: s["merges"].insert(0, [-1, 5]),
    lambda s: s["merges"].insert(0, [1, 2, 3]),
    lambda s: s["merges"].insert(0, [1.5, 2]),
    lambda s: s["merges"].insert(0, [True, 2]),
    lambda s: s.__setitem__("merges", {"a": 1}),
    lambda s: s.__setitem__("scaffold_tokens", ["x"]),
    lambda s: s.__setitem__("pretokenizer", {"whitespace": "tabs"}),
    lambda s: s.__setitem__("pretokenizer", {"digits": True}),
    lambda s: s.pop("scaffold"),
    lambda s: s.clear(),
])
def test_damaged_file_in_a_workdir_is_a_data_error(toks, tmp_path, damage):
    """Without a sidecar (edited by hand, copied without it) the content is checked."""
    spec = json.loads(toks[True].model_json)
    damage(spec)
    path = tmp_path / hf_tokenizer.BPE_FILE
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="not a valid kyx BPE tokenizer file"):
        hf_tokenizer.load_tokenizer(str(tmp_path))
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a kyx-bpe v1 file"):
        hf_tokenizer.load_tokenizer(str(tmp_path))
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(DataError, match="not a valid"):
        hf_tokenizer.load_tokenizer(str(tmp_path))


def test_unusable_training_settings():
    with pytest.raises(DataError, match="empty"):
        bpe.train_bpe([], vocab_size=300)
    with pytest.raises(DataError, match="all empty"):
        bpe.train_bpe(["", ""], vocab_size=300)
    with pytest.raises(ConfigError, match="too small"):
        bpe.train_bpe(["abc"], vocab_size=9 + NUM_BYTES)
