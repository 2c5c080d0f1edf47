"""SentencePiece BPE tokenizer: exact round trips, special ids, digit splitting, caching."""
import os
import pickle

import pytest
import sentencepiece as spm

from kyx import data
from kyx.data import tokenizer as tok_lib
from kyx.errors import ConfigError

CODE = ("def f(x):\n\tif x  >  12345:\r\n\n        return  '\\n'  # café 日本\u00a0\n"
        "\n\n\tclass  A :  pass\t\t\n   \n0.5e-10\x00\x7f 🙂 end")


def test_round_trip_and_special_ids(small_setup):
    _, _, tok = small_setup
    assert isinstance(tok, data.Tokenizer)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 3, 512)
    for text in (CODE, "", "\n", "\t\t\n  \n", " leading and trailing  ", "x" * 5000):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([CODE, "a\nb"]) == [tok.encode(CODE), tok.encode("a\nb")]
    assert all(tok.id_to_piece(i) in "0123456789" for i in tok.encode("9876543210"))
    assert len(tok.encode("9876543210")) == 10
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(CODE) == tok.encode(CODE) and clone.vocab_size == tok.vocab_size


def test_newlines_and_indentation_are_learned(small_setup):
    _, _, tok = small_setup
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert any("\n" in p for p in pieces[260:]), "newlines should take part in merges"
    assert "\u2581" * 4 in pieces, "indentation should be a whitespace-only piece"


def test_training_is_cached_by_fingerprint(tmp_path, monkeypatch, stdlib_copy):
    src = stdlib_copy(str(tmp_path / "t"))
    texts = [open(os.path.join(src, f)).read() for f in sorted(os.listdir(src))]
    cache = str(tmp_path / "cache")
    tok1 = tok_lib.train_sentencepiece(texts, vocab_size=512, cache_dir=cache)
    mtime = os.stat(tok1.path).st_mtime_ns

    def fail(*a, **k):
        raise AssertionError("retrained although a cached model exists")
    monkeypatch.setattr(spm.SentencePieceTrainer, "train", fail)
    tok2 = tok_lib.train_sentencepiece(texts, vocab_size=512, cache_dir=cache)
    assert tok2.path == tok1.path and os.stat(tok1.path).st_mtime_ns == mtime
    assert tok2.encode(CODE) == tok1.encode(CODE)
    with pytest.raises(AssertionError, match="retrained"):  # other text: other fingerprint
        tok_lib.train_sentencepiece(texts[1:], vocab_size=512, cache_dir=cache)
    with pytest.raises(AssertionError, match="retrained"):  # other vocab size
        tok_lib.train_sentencepiece(texts, vocab_size=520, cache_dir=cache)


def test_model_path_and_errors(small_setup, tmp_path, make_cfg):
    cfg, corpus, tok = small_setup
    cfg2 = make_cfg(tmp_path, name="text_files", path=cfg.path)
    cfg2.tokenizer.model_path = tok.path
    loaded = data.make_tokenizer(cfg2, corpus)
    assert loaded.encode(CODE) == tok.encode(CODE)
    cfg2.tokenizer.model_path = str(tmp_path / "missing.model")
    with pytest.raises(ConfigError, match="Cannot load"):
        data.make_tokenizer(cfg2, corpus)
    with pytest.raises(ConfigError, match="too small"):
        tok_lib.train_sentencepiece(["abc"], vocab_size=100)
    with pytest.raises(ConfigError, match="Vocabulary size too high"):
        tok_lib.train_sentencepiece(["tiny corpus\n"], vocab_size=2000)


def test_to_sentences_keeps_text_and_limits():
    text = "a\n" * 3000 + "x" * 10000 + "\nlast"
    chunks = tok_lib.to_sentences([text, "second"], max_bytes=10**9, sentence_bytes=64)
    assert "".join(chunks) == text + "second"
    assert max(len(c.encode()) for c in chunks) <= 64
    assert tok_lib.to_sentences([text, "second"], max_bytes=10) == \
        tok_lib.to_sentences([text], max_bytes=10**9)
