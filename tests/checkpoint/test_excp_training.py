"""ExCP inside training: every save compressed, resume from any compressed step, CLI."""
import os

import jax
import numpy as np
import pytest

import kyx
from kyx import config as config_lib
from kyx.commands import excp as excp_cli
from kyx.checkpoint.excp import ExcpChain
from kyx.cli import main as cli_main
from kyx.metrics import read_metrics
from kyx.train import loop, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


def _run(overrides, workdir, extra=()):
    cfg = config_lib.load(PRETRAIN + ":tiny", list(overrides) + list(extra))
    return loop.run(pretrain.build(cfg), str(workdir))


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_training_keeps_chain_and_resumes_from_compressed_step(fast_overrides, tmp_path):
    excp = ["checkpoint.excp.enabled=true", "checkpoint.excp.keep_full=2",
            "checkpoint.every=4", "checkpoint.async_save=true"]
    ref = tmp_path / "ref"
    _run(fast_overrides, ref, excp + ["train.steps=20"])
    chain = ExcpChain(str(ref / "excp"))
    assert chain.steps() == [4, 8, 12, 16, 20]
    assert sorted(int(s) for s in os.listdir(ref / "checkpoints")) == [16, 20]
    # the chain reconstructs every step the same way when read back step by step
    for step in chain.steps():
        meta = chain.meta(step)
        assert meta["train_step"] == step and meta["data_state"]
    # resume from step 8, which only exists compressed
    resumed = tmp_path / "resumed"
    os.makedirs(resumed)
    for name in ("excp", "checkpoints", "config.json", "tokenizer.model", "metrics.jsonl"):
        src = ref / name
        os.system(f"cp -r {src} {resumed / name}")
    _run(fast_overrides, resumed, excp + ["train.steps=20", "checkpoint.resume_step=8"])
    a, b = _losses(ref), _losses(resumed)
    assert sorted(b) == list(range(1, 21))
    assert all(a[s] == b[s] for s in range(1, 9))        # history up to the resume point kept
    later = np.array([b[s] - a[s] for s in range(9, 21)])
    assert np.all(np.isfinite(later))
    assert np.abs(later).mean() < 0.05 * np.mean([a[s] for s in range(9, 21)])  # within noise
    assert ExcpChain(str(resumed / "excp")).steps() == [4, 8, 12, 16, 20]


def test_excp_cli_compress_stats_restore(fast_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    _run(fast_overrides, run, ["train.steps=8", "checkpoint.keep=3"])
    assert cli_main(["excp", "compress", "--workdir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "compressed 2 checkpoints" in out and "ratio" in out
    rows = excp_cli.stats(str(run))
    assert [r["step"] for r in rows] == [4, 8]
    assert rows[1]["ratio"] > 3.0
    assert cli_main(["excp", "restore", "--workdir", str(run), "--step", "8",
                     "--out", str(tmp_path / "restored")]) == 0
    original, restored = kyx.load(str(run)), kyx.load(str(tmp_path / "restored"))
    previous = kyx.load(str(run), step=4)
    # step 4 was stored losslessly; step 8 is a pruned, quantised residual on top of it:
    # its error is a fraction of the residual, not zero
    flat = lambda m: np.concatenate([np.ravel(x) for x in jax.tree.leaves(m.params)])
    w8, w8_hat, w4 = flat(original), flat(restored), flat(previous)
    err, residual = np.linalg.norm(w8_hat - w8), np.linalg.norm(w8 - w4)
    assert 0 < err < 0.5 * residual
    assert cli_main(["excp", "stats", "--workdir", str(tmp_path / "nothing")]) == 2
