"""HF tokenizer.json of kyx's byte-level BPE tokenizers (kyx/interop/hf_bpe_export.py):
plain BPE encodes identically; Scaffold-BPE is exact after the demolition table, and no
BPE model can be exact (witnesses by the lemma of the module docstring); the export
directory loads in transformers."""
import json
import os

import numpy as np
import pytest
import tokenizers

from kyx.data import bpe, hf_tokenizer
from kyx.data.bpe_train import NUM_BYTES, BpeModel
from kyx.data.pretokenize import PreTokenizer
from kyx.interop import hf_bpe_export
from kyx.interop.hf_tokenizer_export import export_tokenizer

STDLIB = os.path.dirname(os.__file__)
TRAIN = ("textwrap.py", "heapq.py", "shlex.py", "fnmatch.py", "copy.py", "glob.py")
HELD_OUT = ("bisect.py", "colorsys.py", "keyword.py", "string.py", "stat.py")
# the hand-worked Scaffold-BPE model of tests/data/test_bpe.py at |V| = 256 + 4:
# merges ab, abc, abcd, xy, pq; abc is a scaffold token
HAND = BpeModel([(97, 98), (256, 99), (257, 100), (120, 121), (112, 113)], frozenset({257}))


def _read(names):
    return [open(os.path.join(STDLIB, n), encoding="utf-8").read() for n in names]


def random_text(rng, n):
    """Arbitrary Unicode without lone surrogates (Rust strings cannot hold them)."""
    pools = [range(32, 127), [9, 10, 13, 32, 0, 0xA0, 0x85, 0x2028, 0x3000, 0x1C, 0xB],
             range(0xA1, 0x17F), range(0x4E00, 0x4F00), range(0x1F600, 0x1F650),
             range(0x300, 0x36F), range(0x660, 0x66A), range(0x10000, 0x10100),
             range(0xE000, 0xE010)]
    return "".join(chr(pool[rng.integers(len(pool))])
                   for pool in (pools[rng.integers(len(pools))] for _ in range(n)))


@pytest.fixture(scope="module")
def toks():
    texts = _read(TRAIN)
    return {kind: bpe.train_bpe(texts, vocab_size=900, scaffold=kind == "scaffold_bpe",
                                split_digits=kind == "bpe")
            for kind in ("bpe", "scaffold_bpe")}


@pytest.fixture(scope="module")
def sample():
    """A few KB of held-out code and seeded random Unicode."""
    rng = np.random.default_rng(0)
    texts = [t[:3000] for t in _read(HELD_OUT)]
    texts += ["", " ", "\r\n\r\n", "x" * 500, "  12345 6.02e23\t\n"]
    return texts + [random_text(rng, int(rng.integers(1, 300))) for _ in range(40)]


def _hf(tok):
    return tokenizers.Tokenizer.from_str(hf_bpe_export.tokenizer_json(tok))


def test_plain_bpe_encodes_identically(toks, sample):
    tok = toks["bpe"]
    hf = _hf(tok)
    assert hf.get_vocab_size() == tok.vocab_size
    assert sum(len(t) for t in sample) > 15000
    for text in sample:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.encode(text).ids == [tok.bos_id] + ids
        assert hf.decode(ids) == text


def test_scaffold_export_is_exact_after_demolition(toks, sample):
    tok = toks["scaffold_bpe"]
    hf, table = _hf(tok), hf_bpe_export.scaffold_table(tok)
    assert len(table) == len(tok.model.scaffold) > 0
    assert min(table) == tok.vocab_size and max(table) == tok.vocab_size + len(table) - 1
    scaffold_ids = 0
    for text in sample:
        got = hf.encode(text, add_special_tokens=False).ids
        scaffold_ids += sum(i >= tok.vocab_size for i in got)
        assert hf_bpe_export.demolish(got, table) == tok.encode(text), text
        assert hf.decode(got) == text
    assert scaffold_ids > 0   # the table is needed on ordinary code


def single_token_words(tok):
    """Words kyx encodes as one token, by their bytes."""
    pieces, index = tok._pieces, {p: e for e, p in enumerate(tok._pieces)}

    def single(piece):
        try:
            word = piece.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if tok.pretokenizer.split(word) != [word]:
            return None   # not a word of its own: the lemma says nothing
        e = index.get(piece)
        return e in tok._dense and tok.encode(word) == [tok._dense[e]]
    return pieces, single


def bpe_witnesses(tok):
    """Tokens w that kyx encodes as [w] while every split w = x + y into words has a half
    kyx does not encode as one token: no rank-ordered BPE model encodes like kyx."""
    pieces, single = single_token_words(tok)
    found = []
    for e in tok._dense:
        w = pieces[e]
        if len(w) < 2 or not single(w):
            continue
        halves = [(single(w[:k]), single(w[k:])) for k in range(1, len(w))]
        if all(x is not None and y is not None for x, y in halves) and \
                not any(x and y for x, y in halves):
            found.append(w)
    return found


def test_no_bpe_model_reproduces_scaffold_demolition(toks):
    hand = bpe.BpeTokenizer(bpe.to_json(HAND, True, PreTokenizer()))
    assert hand.encode("abcd") == [9 + NUM_BYTES + 1]                  # [abcd]
    assert hand.encode("abc") == [9 + NUM_BYTES, 9 + 99]               # [ab, c]
    assert bpe_witnesses(hand) == [b"abcd"]
    # a trained model has many (e.g. " return" on stdlib code at vocab 2000); plain BPE none
    assert len(bpe_witnesses(toks["scaffold_bpe"])) > 0
    assert bpe_witnesses(toks["bpe"]) == []


@pytest.mark.parametrize("kind", ["bpe", "scaffold_bpe"])
def test_export_directory_loads_in_transformers(toks, sample, kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = toks[kind]
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    hf_tokenizer.save_tokenizer(tok, str(work))
    (out / hf_bpe_export.SCAFFOLD_FILE).parent.mkdir()
    (out / hf_bpe_export.SCAFFOLD_FILE).write_text("{}")   # a stale table is removed
    written = export_tokenizer(str(work), str(out), tok, {"trainer": "pretrain"}, 256)
    assert {"tokenizer.bpe.json", "tokenizer.json", "tokenizer_config.json"} <= set(written)
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    table = {}
    if kind == "scaffold_bpe":
        spec = json.loads((out / hf_bpe_export.SCAFFOLD_FILE).read_text())
        assert spec["vocab_size"] == tok.vocab_size
        table = {int(k): v for k, v in spec["demolition"].items()}
        assert table == hf_bpe_export.scaffold_table(tok)
    else:
        assert not (out / hf_bpe_export.SCAFFOLD_FILE).exists()
    for text in sample[:8]:
        ids = auto(text)["input_ids"]
        assert hf_bpe_export.demolish(ids, table) == [tok.bos_id] + tok.encode(text)
    # kyx reads the export back with its own file
    assert hf_tokenizer.load_tokenizer(str(out)).model_json == tok.model_json


def test_a_pair_merged_twice_keeps_its_first_rank():
    # ranks: 0 (b,c)=bc, 1 (a,b)=ab, 2 (a,bc)=abc, 3 (b,c) again (a later re-creation of
    # a token can make a merged pair reappear); kyx uses rank 0, tokenizers the last one
    model = BpeModel([(98, 99), (97, 98), (97, 256), (98, 99)])
    tok = bpe.BpeTokenizer(bpe.to_json(model, False, PreTokenizer()))
    assert tok.encode("abc") == [9 + NUM_BYTES + 2]                    # [abc]
    assert _hf(tok).encode("abc", add_special_tokens=False).ids == tok.encode("abc")


@pytest.mark.parametrize("kind", ["bpe", "scaffold_bpe"])
def test_check_export_counts_identical_texts(toks, sample, kind):
    out = hf_bpe_export.check_export(toks[kind], sample)
    assert out == {"texts": len(sample), "identical": len(sample),
                   "tokens": sum(len(toks[kind].encode(t)) for t in sample)}
