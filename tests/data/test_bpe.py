"""Byte-level BPE and Scaffold-BPE (kyx/data/bpe_train.py, bpe.py, pretokenize.py):
hand-worked training runs, determinism, round trips, demolition, files, config kinds."""
import os
import pickle

import numpy as np
import pytest

from kyx import data
from kyx.data import bpe, hf_tokenizer
from kyx.data.bpe_train import NUM_BYTES, train_bpe_model
from kyx.data.pretokenize import PreTokenizer
from kyx.errors import ConfigError, DataError, IntegrityError

# Word counts of the hand-worked corpus (the trainer's input; words are their bytes).
#   initial pairs: (a,b) 10+4=14, (b,c) 10, (c,d) 10, (x,y) 5, (p,q) 4
HAND = {"abcd": 10, "ab": 4, "xy": 5, "pq": 4}
#  step  head (count)  Scaffold-BPE                                   |V| - 256
#  1     (a,b) 14      ab=256; f(ab)=14; children are bytes            1
#  2     (ab,c) 10     abc=257 (tie with (c,d) 10: b"ab" < b"c");       2
#                      f(ab)=14-10=4 < head (abc,d) 10: ab scaffold     1
#  3     (abc,d) 10    abcd=258; f(abc)=0 < head (x,y) 5: abc scaffold  2 -> 1
#  4     (x,y) 5       xy=259                                           2
#  5     token ab 4    f(ab)=4 ties with (p,q) 4; a re-activation wins   3
#                      ties (f(x) == head is not scaffold): ab back in V
#  6     (p,q) 4       pq=260                                           4
# Plain BPE never removes anything: ab, abc, abcd, xy fill 4 slots and pq does not fit.
AB, ABC, ABCD, XY, PQ = 256, 257, 258, 259, 260
MERGES = [(97, 98), (AB, 99), (ABC, 100), (120, 121), (112, 113)]
CODE = ("def f(x):\n\tif x  >  12345:\r\n\n        return  '\\n'  # café 日本\u00a0\n"
        "\n\n\tclass  A :  pass\t\t\n   \n0.5e-10\x00\x7f 🙂 end <|user|> <s>")


def test_scaffold_bpe_by_hand():
    model = train_bpe_model(HAND, NUM_BYTES + 4, scaffold=True)
    assert model.merges == MERGES
    assert model.scaffold == {ABC}                      # ab was scaffold, then re-activated
    assert model.vocab()[NUM_BYTES:] == [AB, ABCD, XY, PQ]
    # one slot fewer: training stops after step 5 (ab back in V), pq never merged
    model = train_bpe_model(HAND, NUM_BYTES + 3, scaffold=True)
    assert model.merges == MERGES[:4] and model.scaffold == {ABC}
    assert model.vocab()[NUM_BYTES:] == [AB, ABCD, XY]
    # two fewer: stops after step 4, while ab is still a scaffold token
    model = train_bpe_model(HAND, NUM_BYTES + 2, scaffold=True)
    assert model.merges == MERGES[:4] and model.scaffold == {AB, ABC}
    assert model.vocab()[NUM_BYTES:] == [ABCD, XY]


def test_plain_bpe_by_hand():
    model = train_bpe_model(HAND, NUM_BYTES + 4, scaffold=False)
    assert model.merges == MERGES[:4] and model.scaffold == frozenset()
    assert model.vocab()[NUM_BYTES:] == [AB, ABC, ABCD, XY]
    # no pair left: a vocabulary shorter than asked
    assert len(train_bpe_model(HAND, 1000).vocab()) == NUM_BYTES + 5
    with pytest.raises(ConfigError, match="too small"):
        train_bpe_model(HAND, 100)


def test_scaffold_threshold_is_strict():
    # pairs: (a,b) 10, (b,c) 5, (d,e) 5.  1: ab=256.  2: (ab,c) 5 ties (d,e) 5, b"ab" < b"d":
    # abc=257, f(ab) = 10 - 5 = 5, not below the head (d,e) 5: ab stays.  3: de=258.
    model = train_bpe_model({"abc": 5, "ab": 5, "de": 5}, NUM_BYTES + 3, scaffold=True)
    assert model.merges == [(97, 98), (256, 99), (100, 101)] and not model.scaffold
    model = train_bpe_model({"abc": 5, "ab": 5, "de": 5}, NUM_BYTES + 2, scaffold=True)
    assert model.merges == [(97, 98), (256, 99)] and not model.scaffold
    # "ab": 4 -> f(ab) = 4 < 5 after step 2: scaffold; 3: de=258; 4: no pair is left and
    # ab's token entry (4) is the head: re-activated
    model = train_bpe_model({"abc": 5, "ab": 4, "de": 5}, NUM_BYTES + 3, scaffold=True)
    assert model.merges == [(97, 98), (256, 99), (100, 101)] and not model.scaffold
    model = train_bpe_model({"abc": 5, "ab": 4, "de": 5}, NUM_BYTES + 2, scaffold=True)
    assert model.scaffold == {256} and model.vocab()[NUM_BYTES:] == [257, 258]


def test_bytes_never_scaffold():
    # "aaaa": (a,a) merges into aa, f(a) drops to 0 below every head; a is a byte and stays
    model = train_bpe_model({"aaaa": 9, "bc": 2, "de": 1}, NUM_BYTES + 3, scaffold=True)
    assert all(x >= NUM_BYTES for x in model.scaffold)
    assert 97 in model.vocab() and 98 in model.vocab()


@pytest.fixture(scope="module")
def stdlib_texts():
    src = os.path.join(os.path.dirname(os.__file__))
    names = ("textwrap.py", "heapq.py", "shlex.py", "fnmatch.py", "copy.py", "glob.py",
             "bisect.py", "colorsys.py", "keyword.py", "string.py")
    return [open(os.path.join(src, n), encoding="utf-8").read() for n in names]


@pytest.fixture(scope="module")
def toks(stdlib_texts):
    """{kind: BpeTokenizer} trained on ten stdlib modules, vocab 700."""
    return {kind: bpe.train_bpe(stdlib_texts, vocab_size=700, scaffold=kind == "scaffold_bpe")
            for kind in ("bpe", "scaffold_bpe")}


def test_size_scaffolds_and_determinism(toks, stdlib_texts):
    plain, scaffold = toks["bpe"], toks["scaffold_bpe"]
    assert plain.vocab_size == scaffold.vocab_size == 700   # |V|, not |E|, is the size
    assert not plain.model.scaffold and len(scaffold.model.scaffold) > 0
    assert len(scaffold.model.merges) == 700 - 9 - 256 + len(scaffold.model.scaffold)
    again = bpe.train_bpe(list(stdlib_texts), vocab_size=700, scaffold=True)
    assert again.model_json == scaffold.model_json       # byte for byte
    # marking scaffolds leaves the pair counts alone: Scaffold-BPE makes plain BPE's merges,
    # more of them, and its V trades the scaffolds for tokens plain BPE never reached
    n = len(plain.model.merges)
    assert scaffold.model.merges[:n] == plain.model.merges and len(scaffold.model.merges) > n
    assert plain.model.vocab() != scaffold.model.vocab()
    assert max(scaffold.model.vocab()) > max(plain.model.vocab())


def random_text(rng, n):
    """Arbitrary Unicode (no lone surrogates): ASCII, whitespace, Latin-1, CJK, emoji, ..."""
    pools = [range(32, 127), [9, 10, 13, 32, 0, 0xA0, 0x2028, 0x3000], range(0xA1, 0x17F),
             range(0x4E00, 0x4F00), range(0x1F600, 0x1F650), range(0x300, 0x36F),
             range(0x10000, 0x10100), range(0xE000, 0xE010), range(0xD7F0, 0xD800)]
    out = []
    for _ in range(n):
        pool = pools[rng.integers(len(pools))]
        out.append(chr(pool[rng.integers(len(pool))]))
    return "".join(out)


@pytest.mark.parametrize("kind", ["bpe", "scaffold_bpe"])
def test_round_trip_and_ids_in_v(toks, stdlib_texts, kind):
    tok = toks[kind]
    rng = np.random.default_rng(0)
    texts = [CODE, "", "\n", "\t\t\n  \n", " x  ", "x" * 3000, "9876543210"]
    texts += [random_text(rng, int(rng.integers(1, 200))) for _ in range(200)]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(9 <= i < tok.vocab_size for i in ids)   # never a special, always in V
    for text in stdlib_texts[:3]:                            # encode(decode(ids)) == ids
        ids = tok.encode(text)
        assert tok.encode(tok.decode(ids)) == ids
    assert len(tok.encode("9876543210")) == 10             # Baichuan 2 digit split
    assert tok.encode_batch([CODE, "a\nb"]) == [tok.encode(CODE), tok.encode("a\nb")]
    assert tok.decode([tok.bos_id, *tok.encode("hi"), 4, 8, tok.eos_id]) == "hi"


def test_pretokenizer_covers_text():
    rng = np.random.default_rng(1)
    for opts in ({}, {"split_digits": False}, {"whitespace": "single"}):
        pre = PreTokenizer(**opts)
        for _ in range(50):
            text = random_text(rng, 300)
            assert "".join(pre.split(text)) == text
    assert PreTokenizer(split_digits=False).split("x 12345") == ["x", " ", "123", "45"]
    assert PreTokenizer().split("x 12345") == ["x", " ", "1", "2", "3", "4", "5"]
    assert PreTokenizer().split("a\n    b") == ["a", "\n", "   ", " b"]
    assert PreTokenizer(whitespace="single").split("a\n  b") == ["a", "\n", " ", " b"]
    with pytest.raises(ConfigError, match="whitespace"):
        PreTokenizer(whitespace="tabs")


def test_demolition():
    """Encoding with all merges of E, then scaffold tokens broken down to V."""
    model = train_bpe_model(HAND, NUM_BYTES + 4, scaffold=True)   # S = {abc}
    tok = bpe.BpeTokenizer(bpe.to_json(model, True, PreTokenizer()))
    dense = {p: i for i, p in enumerate(tok._id_bytes) if i >= 9}
    assert tok.expanded_tokens("abc") == [b"abc"]               # abc is a stepping stone ...
    assert tok.encode("abc") == [dense[b"ab"], dense[b"c"]]     # ... demolished to ab + c
    assert tok.encode("abcd") == [dense[b"abcd"]]               # reached through abc
    assert b"abc" not in dense and tok.vocab_size == 9 + NUM_BYTES + 4
    assert tok.decode(tok.encode("abc abcd")) == "abc abcd"
    # a deeper demolition: abc and ab both scaffold (target NUM_BYTES + 2)
    model = train_bpe_model(HAND, NUM_BYTES + 2, scaffold=True)
    tok = bpe.BpeTokenizer(bpe.to_json(model, True, PreTokenizer()))
    assert tok.encode("abc") == [9 + 97, 9 + 98, 9 + 99]
    assert tok.id_to_piece(9 + 97) == "<0x61>" and tok.id_to_piece(4) == "<|system|>"
    assert tok.special_id("<|user|>") == 5 and tok.special_id("<|ph|>") == 8
    assert tok.special_id("abc") is None and tok.encode("<|user|>") != [5]


def test_save_load_and_corruption(toks, tmp_path):
    tok = toks["scaffold_bpe"]
    path = tok.save(str(tmp_path / "tok.json"))
    loaded = bpe.BpeTokenizer.from_file(path)
    assert loaded.model_json == tok.model_json and loaded.encode(CODE) == tok.encode(CODE)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(CODE) == tok.encode(CODE) and clone.vocab_size == tok.vocab_size
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw.replace(b'"merges":[[', b'"merges":[[1', 1))
    with pytest.raises(IntegrityError, match="damaged"):
        bpe.BpeTokenizer.from_file(path)
    with pytest.raises(DataError, match="not a valid kyx BPE"):
        bpe.BpeTokenizer(raw.replace(b'"merges"', b'"mergez"'))
    with pytest.raises(DataError, match="scaffold ids"):
        bpe.BpeTokenizer(raw.replace(b'"scaffold_tokens":[', b'"scaffold_tokens":[65,'))
    # a run's workdir: saved next to the other run files, loaded by kyx.load's loader
    workdir = str(tmp_path / "run")
    assert hf_tokenizer.save_tokenizer(tok, workdir) == [hf_tokenizer.BPE_FILE]
    assert hf_tokenizer.has_tokenizer(workdir)
    again = hf_tokenizer.load_tokenizer(workdir)
    assert isinstance(again, bpe.BpeTokenizer) and again.encode(CODE) == tok.encode(CODE)
    assert hf_tokenizer.special_ids(again)["<|eot|>"] == 7
    assert hf_tokenizer.encode_with_special_tokens(again, "<|user|>hi") == [5, *tok.encode("hi")]


@pytest.mark.parametrize("kind", ["bpe", "scaffold_bpe"])
def test_make_tokenizer_kinds(kind, tmp_path, make_cfg, stdlib_copy, monkeypatch):
    cfg = make_cfg(tmp_path / "data", name="text_files",
                   path=stdlib_copy(str(tmp_path / "texts")), min_val_files=2)
    cfg.tokenizer.kind = kind
    corpus, tok = data.prepare(cfg)
    assert isinstance(tok, bpe.BpeTokenizer) and tok.scaffold == (kind == "scaffold_bpe")
    assert tok.vocab_size == 512 and tok.decode(tok.encode(CODE)) == CODE
    assert os.path.dirname(tok.path).endswith("tokenizers")

    def fail(*a, **k):
        raise AssertionError("retrained although a cached model exists")
    monkeypatch.setattr(bpe, "train_bpe_model", fail)
    assert data.make_tokenizer(cfg, corpus).model_json == tok.model_json
    cfg.tokenizer.split_digits = False      # another option: another fingerprint
    with pytest.raises(AssertionError, match="retrained"):
        data.make_tokenizer(cfg, corpus)
    cfg.tokenizer.model_path = tok.path     # a trained file named directly
    assert data.make_tokenizer(cfg, corpus).model_json == tok.model_json
    cfg.tokenizer.model_path, cfg.tokenizer.kind = "", "scafold_bpe"
    with pytest.raises(ConfigError, match="did you mean scaffold_bpe"):
        data.make_tokenizer(cfg, corpus)


@pytest.mark.slow
def test_training_run_with_scaffold_bpe(fast_overrides, tmp_path):
    """A 2-step pretraining run trains and saves the tokenizer; kyx.load samples with it."""
    import kyx
    from kyx import config as config_lib
    from kyx.train import loop, pretrain

    preset = os.path.join(os.path.dirname(kyx.__file__), "..", "configs", "pretrain.py")
    cfg = config_lib.load(preset + ":tiny", fast_overrides + [
        "data.tokenizer.kind=scaffold_bpe", "train.steps=2", "checkpoint.every=2",
        "train.eval_every=100", "data.tokenizer.sample_bytes=100000"])
    workdir = str(tmp_path / "run")
    loop.run(pretrain.build(cfg), workdir)
    assert os.path.exists(os.path.join(workdir, hf_tokenizer.BPE_FILE + ".sha256"))
    loaded = kyx.load(workdir)
    assert isinstance(loaded.tokenizer, bpe.BpeTokenizer) and loaded.tokenizer.scaffold
    assert isinstance(loaded.generate("def ", max_tokens=4, seed=0), str)
