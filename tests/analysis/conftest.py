"""Shared fixtures of the analysis tests: one small trained language-model workdir."""
import os

import pytest

from kyx import config as config_lib
from kyx.train import loop, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def lm_workdir(fast_overrides, tmp_path_factory):
    """An 8-step pretraining workdir (d_model 32, 2 layers, vocab 384) with checkpoints at
    steps 4 and 8, trained on the small test corpus."""
    workdir = tmp_path_factory.mktemp("lm")
    cfg = config_lib.load(os.path.join(ROOT, "configs", "pretrain.py") + ":tiny",
                          fast_overrides + ["train.steps=8", "train.eval_every=8"])
    loop.run(pretrain.build(cfg), str(workdir))
    return str(workdir)
