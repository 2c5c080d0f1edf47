"""kyx/data/recall.py: MQAR rows (context pairs, queries, value targets), JRT repetition,
kyx batch layout, seeding; checked row by row against a plain-Python reading of the row."""
import numpy as np
import pytest

from kyx.data import recall
from kyx.errors import ConfigError


@pytest.mark.parametrize("jrt", [False, True])
def test_rows_are_pairs_then_queries_with_value_targets(jrt):
    spec = recall.RecallSpec(pairs=6, queries=4, vocab_size=40, seq_len=48, jrt=jrt)
    batch = recall.recall_batch(7, 5, spec)
    assert set(batch) == {"tokens", "targets", "segment_ids", "positions", "loss_mask"}
    assert all(a.shape == (5, 48) for a in batch.values())
    assert batch["loss_mask"].dtype == np.float32 and batch["tokens"].dtype == np.int32
    k = spec.num_keys                                  # keys [2, 21), values [21, 40)
    for row in range(5):
        tok = batch["tokens"][row].tolist()
        pairs = list(zip(tok[0:12:2], tok[1:12:2]))
        keys = [a for a, _ in pairs]
        assert len(set(keys)) == 6 and all(2 <= a < 2 + k for a in keys)
        assert all(2 + k <= b < 40 for _, b in pairs)
        body = 24 if jrt else 12
        if jrt:
            assert tok[12:24] == tok[0:12]             # the context read twice
        assert spec.context_len == body
        lookup = dict(pairs)
        queries = tok[body:body + 8]
        assert len(set(queries[0::2])) == 4
        assert [lookup[a] for a in queries[0::2]] == queries[1::2]
        length = body + 8
        assert tok[length:] == [recall.PAD_ID] * (48 - length)
        mask = batch["loss_mask"][row]
        assert np.flatnonzero(mask).tolist() == list(range(body, length, 2))
        for i in np.flatnonzero(mask):                 # the query key's target is its value
            assert batch["targets"][row, i] == lookup[tok[i]]
        np.testing.assert_array_equal(batch["segment_ids"][row],
                                      [1] * length + [0] * (48 - length))
        np.testing.assert_array_equal(batch["positions"][row],
                                      list(range(length)) + [0] * (48 - length))


def test_same_seed_same_rows_and_jrt_keeps_the_pairs():
    spec = recall.RecallSpec(pairs=8, queries=8, vocab_size=64, seq_len=64)
    a, b = recall.recall_batch(1, 4, spec), recall.recall_batch(1, 4, spec)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (recall.recall_batch(2, 4, spec)["tokens"] != a["tokens"]).any()
    twice = recall.recall_batch(1, 4, recall.RecallSpec(8, 8, 64, 64, jrt=True))
    np.testing.assert_array_equal(twice["tokens"][:, :16], a["tokens"][:, :16])


def test_spec_errors():
    with pytest.raises(ConfigError, match="raise seq_len"):
        recall.recall_batch(0, 1, recall.RecallSpec(pairs=8, queries=8, vocab_size=64,
                                                    seq_len=40, jrt=True))
    with pytest.raises(ConfigError, match="distinct keys"):
        recall.RecallSpec(pairs=40, queries=4, vocab_size=64, seq_len=512).validate()
    with pytest.raises(ConfigError, match="queries=9"):
        recall.RecallSpec(pairs=8, queries=9).validate()
