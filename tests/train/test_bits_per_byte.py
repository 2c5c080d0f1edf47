"""eval/bits_per_byte of a pretraining run: CE in nats over the validation targets /
(ln 2 x the UTF-8 bytes they stand for), the bytes being exactly those of the validation
batches' masked targets."""
import math
import os

import numpy as np
import pytest

from kyx import config as config_lib
from kyx.data import pipeline
from kyx.data.token_bytes import token_byte_lengths
from kyx.metrics import read_metrics
from kyx.train import loop, pretrain

PRETRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "pretrain.py")


@pytest.mark.slow   # ~20 s on 2 busy cores: one compile + 2 steps + an eval pass
def test_two_step_run_reports_bits_per_byte(fast_overrides, tmp_path):
    cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + ["train.steps=2"])
    loop.run(pretrain.build(cfg), str(tmp_path))
    row = [r for r in read_metrics(tmp_path) if "eval/loss" in r][-1]
    assert row["step"] == 2
    # the bytes are the table summed over the masked targets of the eval batches
    corpus, tok = pipeline.prepare(cfg.data)
    table = token_byte_lengths(tok, cfg.model.vocab_size)
    batches = pipeline.make_iterator(cfg.data, corpus, tok, "validation",
                                     **pipeline.process_split())
    want = sum(int(table[b["targets"]][b["loss_mask"] > 0].sum()) for b in batches)
    assert row["eval/bytes"] == want and want > row["eval/tokens"] > 0
    assert row["eval/bits_per_byte"] == pytest.approx(
        row["eval/loss"] * row["eval/tokens"] / (math.log(2) * row["eval/bytes"]), rel=1e-6)
    assert np.isfinite(row["eval/bits_per_byte"]) and row["eval/bits_per_byte"] > 0
