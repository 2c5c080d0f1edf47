"""SIGKILL during an ExCP run, then resume: bit-exact losses and the same chain."""
import importlib.util
import os

import numpy as np
import pytest

from kyx.checkpoint.excp import ExcpChain
from kyx.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the subprocess fixtures of tests/train/conftest.py (train_process, kill_and_resume)
_spec = importlib.util.spec_from_file_location(
    "_train_conftest", os.path.join(ROOT, "tests", "train", "conftest.py"))
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)
train_process, wait_for_step, kill_and_resume = (
    _train.train_process, _train.wait_for_step, _train.kill_and_resume)


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_sigkill_resume_with_excp_is_bit_exact(fast_overrides, tmp_path, kill_and_resume):
    args = fast_overrides + ["train.steps=14", "checkpoint.excp.enabled=true"]
    ref, killed = kill_and_resume("pretrain", tmp_path, args, 10)
    want, got = _losses(ref), _losses(killed)
    assert sorted(got) == list(range(1, 15)) and got == want
    chains = [ExcpChain(str(d / "excp")) for d in (ref, killed)]
    assert chains[0].steps() == chains[1].steps() == [4, 8, 12, 14]
    for a, b in zip(*(c.reconstruct(14) for c in chains)):   # compression is deterministic
        assert all(np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a)
    assert not [n for n in os.listdir(killed / "excp") if ".tmp" in n]
