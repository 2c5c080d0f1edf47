"""Per-id UTF-8 byte lengths (kyx/data/token_bytes.py), the denominator of eval bits per
byte: on real validation batches of each tokenizer kind, the table summed over a segment's
masked targets is the byte length of the text those targets decode to."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from kyx import config as config_lib
from kyx.data import pipeline
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.data.token_bytes import token_byte_lengths
from kyx.errors import ConfigError
from kyx.train.pretrain import target_bytes

PRETRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "pretrain.py")
KINDS = ("sentencepiece", "bpe", "scaffold_bpe")


@pytest.fixture(scope="module", params=KINDS)
def prepared(request, fast_overrides):
    """(tokenizer, first 3 validation batches) of a tiny tokenizer of each kind trained on
    the small_corpus fixture (cached in the session's data dir)."""
    cfg = config_lib.load(PRETRAIN + ":tiny",
                          fast_overrides + [f"data.tokenizer.kind={request.param}",
                                           "data.eval_batches=3"])
    corpus, tok = pipeline.prepare(cfg.data)
    it = pipeline.make_iterator(cfg.data, corpus, tok, "validation", **pipeline.process_split())
    return tok, list(it)


def test_masked_target_bytes_match_decoded_text(prepared):
    tok, batches = prepared
    table = token_byte_lengths(tok, 400)
    assert table.dtype == np.int32 and table.shape == (400,)
    assert not table[tok.vocab_size:].any()           # padding up to the model's vocab
    assert table[tok.bos_id] == table[tok.eos_id] == table[tok.pad_id] == 0
    checked = split = 0
    for batch in batches:
        mask, targets, seg = batch["loss_mask"] > 0, batch["targets"], batch["segment_ids"]
        for row in range(targets.shape[0]):
            for s in np.unique(seg[row][seg[row] > 0]):
                ids = targets[row][(seg[row] == s) & mask[row]]
                text = tok.decode(ids.tolist())
                if "\ufffd" in text:   # a multi-byte character cut at the row boundary
                    split += 1
                    continue
                assert int(table[ids].sum()) == len(text.encode("utf-8")), (row, s, text)
                checked += 1
        # the jitted eval's sum (kyx/train/pretrain.py) is the same numpy sum
        want = int(table[targets][mask].sum())
        assert int(target_bytes(jnp.asarray(table), jnp.asarray(targets),
                                jnp.asarray(batch["loss_mask"]))) == want
    assert checked >= 8 and split <= checked


def test_hf_byte_level_tokenizer_counts_bytes_exactly(llama3_tokenizer, tmp_path):
    tok = load_tokenizer(llama3_tokenizer(str(tmp_path / "llama3")))
    table = token_byte_lengths(tok)
    for text in ["def add(a, b):\n    return a + b\n", "héllo wörld ✓ 数字 123"]:
        ids = tok.encode(text)
        assert int(table[ids].sum()) == len(text.encode("utf-8"))
    assert table[tok.special_ids()["<|eot_id|>"]] == 0


def test_model_vocab_smaller_than_tokenizer_is_a_config_error(prepared):
    tok, _ = prepared
    with pytest.raises(ConfigError, match="model.vocab_size"):
        token_byte_lengths(tok, tok.vocab_size - 1)
