"""Activation buffers: checksummed shards, i.i.d. batches with exact resume, harvesting."""
import os

import numpy as np
import pytest

import kyx
from kyx.analysis import activation_buffer, harvest, sites
from kyx.errors import ConfigError, DataError


def _buffer(tmp_path, rows=1000, d=6, shard=128):
    x_nd = np.arange(rows * d, dtype=np.float32).reshape(rows, d)
    val_nd = -x_nd[:50]
    buf = activation_buffer.write_buffer(str(tmp_path / "buf"), x_nd, {"site": "test"},
                                         rows_per_shard=shard, val_nd=val_nd)
    return buf, x_nd, val_nd


def test_round_trip_and_every_row_once_per_epoch(tmp_path):
    buf, x_nd, val_nd = _buffer(tmp_path)
    assert (buf.d, buf.num_rows, buf.rows("val"), buf.meta["site"]) == (6, 1000, 50, "test")
    assert len(buf.meta["splits"]["train"]["shards"]) == 8  # 1000 rows in shards of 128
    it = buf.batches(100, seed=3)
    epoch = np.concatenate([next(it)["x_nd"] for _ in range(10)])
    np.testing.assert_array_equal(np.sort(epoch[:, 0]), x_nd[:, 0])  # a permutation
    assert not np.array_equal(epoch[:, 0], x_nd[:, 0])               # not in stored order
    second = np.concatenate([next(it)["x_nd"] for _ in range(10)])
    assert not np.array_equal(second, epoch)                         # a new order per epoch
    np.testing.assert_array_equal(np.sort(second[:, 0]), x_nd[:, 0])
    val = next(buf.batches(50, seed=0, split="val"))["x_nd"]
    np.testing.assert_array_equal(np.sort(val[:, 0]), np.sort(val_nd[:, 0]))
    sample = buf.sample(2000, seed=1)
    assert sample.shape == (1000, 6) and len(np.unique(sample[:, 0])) == 1000


def test_exact_resume_across_an_epoch_end(tmp_path):
    buf, _, _ = _buffer(tmp_path)
    it = buf.batches(300, seed=5)
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it)["x_nd"] for _ in range(3)]  # crosses the end of epoch 0
    again = buf.batches(300, seed=5)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["x_nd"], w)
    other = activation_buffer.write_buffer(str(tmp_path / "other"), np.ones((900, 6)), {})
    with pytest.raises(DataError, match="changed since it was saved"):
        other.batches(300, seed=5).set_state(state)


def test_flipped_byte_and_missing_meta_are_errors(tmp_path):
    buf, _, _ = _buffer(tmp_path)
    shard = os.path.join(buf.path, buf.meta["splits"]["train"]["shards"][3])
    raw = bytearray(open(shard, "rb").read())
    raw[-5] ^= 0x10
    open(shard, "wb").write(bytes(raw))
    with pytest.raises(DataError, match="damaged"):
        activation_buffer.ActivationBuffer(buf.path)
    os.unlink(os.path.join(buf.path, "meta.json"))
    with pytest.raises(DataError, match="no activation buffer"):
        activation_buffer.ActivationBuffer(buf.path)
    with pytest.raises(DataError, match="fewer than one batch"):
        _buffer(tmp_path / "small", rows=10)[0].batches(64, seed=0)


def test_harvest_matches_the_model_and_is_reused(lm_workdir, tmp_path):
    out = str(tmp_path / "acts")
    buf = harvest.harvest(lm_workdir, "blocks.0.resid", out, tokens=300, batch_size=4,
                          seq_len=32, val_fraction=0.2)
    assert (buf.num_rows, buf.rows("val"), buf.d) == (300, 60, 32)
    assert buf.meta["site"] == "blocks.0.resid" and buf.meta["step"] == 8
    # the first stored rows are the first batch's non-padding tokens, in order
    loaded = kyx.load(lm_workdir)
    batch = next(harvest.model_batches(loaded, "train", 4, 32))
    _, act_btd = sites.run(loaded.model, loaded.params, batch["tokens"], batch["segment_ids"],
                           batch["positions"], site=sites.parse_site("blocks.0.resid",
                                                                     loaded.model.cfg))
    want = np.asarray(act_btd)[batch["segment_ids"] > 0][:100]
    np.testing.assert_allclose(buf.take(np.arange(100)), want, atol=1e-5)
    again = harvest.harvest(lm_workdir, "blocks.0.resid", out, tokens=300, batch_size=4,
                            seq_len=32, val_fraction=0.2)
    assert again.meta == buf.meta  # reused, not rebuilt
    with pytest.raises(ConfigError, match="different activation buffer"):
        harvest.harvest(lm_workdir, "blocks.1.resid", out, tokens=300, batch_size=4,
                        seq_len=32)
    with pytest.raises(ConfigError, match="unknown activation site"):
        harvest.harvest(lm_workdir, "blocks.0.residual", str(tmp_path / "x"), tokens=10)
