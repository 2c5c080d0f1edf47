"""Huge documents (a 50 MB single line) are tokenized in bounded pieces with unchanged tokens."""
import io
import random

import numpy as np
import pytest
import sentencepiece as spm

from kyx import data
from kyx.data.tokenizer import SentencePieceTokenizer

# kyx.data.chunking is imported inside the tests that use it, so that the pipeline
# reproduction below also runs (and fails) on code without it.


class Spy:
    """A tokenizer wrapper recording the longest text handed to ``encode``."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0
        self.vocab_size, self.pad_id = tok.vocab_size, tok.pad_id
        self.bos_id, self.eos_id = tok.bos_id, tok.eos_id

    def encode(self, text):
        self.longest = max(self.longest, len(text))
        return self.tok.encode(text)

    def decode(self, ids):
        return self.tok.decode(ids)


def one_line(n_chars, seed=0):
    """A single line of words (runs of 1-3 spaces, some punctuation), ``n_chars`` long."""
    rng = random.Random(seed)
    words = ["def", "return", "x", "self.value", "(a,", "b)", "==", "'text'", "1234", "é"]
    parts, size = [], 0
    while size < n_chars:
        parts.append(rng.choice(words) + " " * rng.choice([1, 1, 1, 2, 3]))
        size += len(parts[-1])
    return "".join(parts)[:n_chars]


@pytest.mark.parametrize("max_chars", [8192, 300])
def test_huge_single_line_is_encoded_in_bounded_pieces(small_setup, make_cfg,
                                                       make_memory_corpus, monkeypatch,
                                                       max_chars):
    """The reproduction: one long line goes through the pipeline; the tokenizer never sees
    more than ``max_chars`` characters at once (8192 by default), and the packed stream is
    the whole-text encoding as one document (boundaries only at its real ends)."""
    if max_chars != 8192:
        monkeypatch.setattr("kyx.data.chunking.MAX_CHARS", max_chars)
    _, _, sp = small_setup
    doc = one_line(60_000) + "\n" + "y" * 1000 + "\n" + one_line(5000, seed=3)
    corpus = make_memory_corpus([{"text": "short one"}, {"text": doc}, {"text": "tail"}])
    cfg = make_cfg("/unused", seq_len=256, batch_size=4)
    spy = Spy(sp)
    batches = list(data.make_iterator(cfg, corpus, spy, "validation"))
    assert spy.longest <= max_chars
    tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
    want = [[sp.bos_id, *sp.encode(t), sp.eos_id] for t in ("short one", doc, "tail")]
    np.testing.assert_array_equal(tokens, np.concatenate(want))
    # segments restart only at row starts and at BOS (a real document start)
    for b in batches:
        seg, tok = b["segment_ids"], b["tokens"]
        new = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] > 0)
        assert (tok[:, 1:][new] == sp.bos_id).all()


def test_split_points_small_chunks():
    from kyx.data import chunking

    def pieces(text, cuts):
        out = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert "".join(out) == text
        return out

    text = "ab  cd\tef\n" + "x" * 25 + " gh"
    # before the run of spaces, after the newline, then hard cuts in the long word
    assert pieces(text, chunking.split_points(text, 8)) == \
        ["ab", "  cd\tef\n", "x" * 8, "x" * 8, "x" * 8, "x gh"]
    assert pieces(text, chunking.split_points(text, 8, "last")) == \
        ["ab ", " cd\tef\n", "x" * 8, "x" * 8, "x" * 8, "x gh"]
    assert pieces(text, chunking.split_points(text, 8, inside_words=False)) == \
        ["ab", "  cd\tef\n" + "x" * 25, " gh"]
    indented = "abc\n    de"
    assert pieces(indented, chunking.split_points(indented, 8)) == ["abc\n", "    de"]
    assert pieces(indented, chunking.split_points(indented, 8, "last")) == ["abc\n   ", " de"]
    assert chunking.split_points("short", 8) == []
    with pytest.raises(ValueError):
        chunking.split_points(text, 0)


def test_pieces_encode_like_whole_text(small_setup, stdlib_copy, tmp_path):
    """Small chunk size on real code: the kyx tokenizer gives identical tokens."""
    from kyx.data import chunking

    _, _, sp = small_setup
    style = chunking.cut_style(sp)
    assert style == chunking.CutStyle("run", inside_words=True, drop_space=False)
    root = stdlib_copy(str(tmp_path / "texts"), ("textwrap.py", "json/decoder.py"))
    for name in ("textwrap.py", "json_decoder.py"):
        text = open(f"{root}/{name}", encoding="utf-8").read() + one_line(3000)
        spy = Spy(sp)
        got = chunking.encode_document(spy, text, style, max_chars=200)
        assert spy.longest <= 200
        np.testing.assert_array_equal(got, [sp.bos_id, *sp.encode(text), sp.eos_id])


@pytest.mark.parametrize("extra_ws", [False, True])
def test_dummy_prefix_tokenizers_cut_at_word_starts(extra_ws):
    """Tokenizers that prepend a space to every input (Llama 2: add_dummy_prefix, spaces
    kept) drop it from later pieces; with spaces collapsed, pieces are encoded as they are.
    Neither may cut inside a word (that would insert a space)."""
    from kyx.data import chunking

    lines = [one_line(200, seed=i) for i in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=300, model_type="bpe",
        add_dummy_prefix=True, remove_extra_whitespaces=extra_ws, byte_fallback=True,
        minloglevel=2, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
    tok = SentencePieceTokenizer(model.getvalue())
    style = chunking.cut_style(tok)
    assert style == chunking.CutStyle("run", inside_words=False, drop_space=not extra_ws)
    text = one_line(5000, seed=7) + "x" * 300 + "  end\nnext  line"
    spy = Spy(tok)
    got = chunking.encode_document(spy, text, style, max_chars=100)
    assert 300 <= spy.longest < 400  # the 300-character word is not cut
    np.testing.assert_array_equal(got, [tok.bos_id, *tok.encode(text), tok.eos_id])


def test_byte_level_bpe_pieces(tmp_path, stdlib_copy):
    """A tokenizer.json byte-level BPE (GPT-2 / Llama 3 style pre-tokenizer) keeps a run's
    last space with the next word, so it is cut before that space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from kyx.data import chunking
    from kyx.data.hf_tokenizer import JsonTokenizer

    root = stdlib_copy(str(tmp_path / "texts"), ("textwrap.py", "shlex.py"))
    texts = [open(f"{root}/{n}", encoding="utf-8").read() for n in ("textwrap.py", "shlex.py")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    jt = JsonTokenizer(str(tmp_path / "tokenizer.json"), 1, 2, None)
    style = chunking.cut_style(jt)
    assert style == chunking.CutStyle("last", inside_words=True, drop_space=False)
    for text in texts:
        spy = Spy(jt)
        got = chunking.encode_document(spy, text, style, max_chars=150)
        assert spy.longest <= 150
        np.testing.assert_array_equal(got, [1, *jt.encode(text), 2])
