"""A pla,swa hybrid trains end to end through the CLI and samples from its workdir."""
import os

import numpy as np
import pytest

from kyx.cli import main as cli_main
from kyx.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


@pytest.mark.slow
def test_hybrid_trains_and_samples(fast_overrides, tmp_path, capsys):
    overrides = fast_overrides + [
        "model.attention=pla,swa", "model.pla_prefix_len=16", "model.attention_window=16",
        "model.pla_chunk=8", "train.steps=3", "train.eval_every=3"]
    assert cli_main(["train", "--config", PRETRAIN + ":tiny", "--workdir", str(tmp_path),
                     *[f"--config.{o}" for o in overrides]]) == 0
    rows = read_metrics(tmp_path)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any(np.isfinite(r.get("eval/loss", np.nan)) for r in rows)
    capsys.readouterr()
    assert cli_main(["sample", "--workdir", str(tmp_path), "--prompt", "def f(x):\n    return",
                     "--max-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def f(x):")
