"""ExCP chain and full checkpoints fall back to each other when one is damaged (issue 14)."""
import json
import os
import shutil

import numpy as np
import pytest

from kyx import config as config_lib
from kyx.checkpoint.excp import ExcpChain
from kyx.checkpoint.excp_store import StepReader
from kyx.cli import main as cli_main
from kyx.errors import CheckpointError
from kyx.metrics import read_metrics
from kyx.train import loop, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# its trained workdir is a module fixture: one xdist worker builds it (pytest.ini loadgroup)
pytestmark = pytest.mark.xdist_group("test_excp_fallback")
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")
EXCP = ["checkpoint.excp.enabled=true", "checkpoint.excp.keep_full=2", "checkpoint.every=4"]


def _run(overrides, workdir, extra=()):
    cfg = config_lib.load(PRETRAIN + ":tiny", list(overrides) + EXCP + list(extra))
    return loop.run(pretrain.build(cfg), str(workdir))


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.fixture(scope="module")
def base(fast_overrides, tmp_path_factory):
    """An 8-step ExCP run: full checkpoints 4 and 8, chain [4, 8] (4 lossless)."""
    workdir = tmp_path_factory.mktemp("excp_base") / "run"
    _run(fast_overrides, workdir, ["train.steps=8"])
    assert ExcpChain(str(workdir / "excp")).steps() == [4, 8]
    return workdir


@pytest.fixture
def run(base, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(base, workdir)
    return workdir


def _truncate_full(workdir, steps):
    for step in steps:
        for root, _, files in os.walk(workdir / "checkpoints" / str(step) / "state"):
            for f in files:
                path = os.path.join(root, f)
                os.truncate(path, os.path.getsize(path) // 2)


def _set_aside(workdir):
    return sorted(n for n in os.listdir(workdir) if n.startswith("excp.") and
                  os.path.isdir(workdir / n))


def test_truncated_manifest_resumes_from_full_checkpoints(fast_overrides, run, capsys):
    manifest = run / "excp" / "manifest.json"
    os.truncate(manifest, os.path.getsize(manifest) // 2)
    _run(fast_overrides, run, ["train.steps=12"])
    out = capsys.readouterr().out
    assert "resumed from" in out and out.split("resumed from")[1].split()[0].endswith("/8")
    assert "ExCP" in out and "fresh chain" in out
    assert ExcpChain(str(run / "excp")).steps() == [8, 12]   # not appended to the broken one
    assert len(_set_aside(run)) == 1                         # the damaged chain is kept aside
    assert max(_losses(run)) == 12


@pytest.mark.parametrize("resume_step", [-1, 4])
def test_damaged_full_checkpoints_resume_from_chain(fast_overrides, base, run, capsys,
                                                    resume_step):
    _truncate_full(run, [4, 8])
    # to 8 steps again from step 4 (same LR schedule as the base run), else on to 12
    steps = 12 if resume_step < 0 else 8
    _run(fast_overrides, run, [f"train.steps={steps}", f"checkpoint.resume_step={resume_step}"])
    out = capsys.readouterr().out
    step = 8 if resume_step < 0 else 4
    assert f"resumed from ExCP reconstruction of step {step}" in out
    assert ExcpChain(str(run / "excp")).steps() == list(range(4, steps + 1, 4))
    got, want = _losses(run), _losses(base)
    assert sorted(got) == list(range(1, steps + 1))
    assert np.all(np.isfinite(list(got.values())))
    if step == 4:   # step 4 is the chain's lossless first entry: the resume is bit-exact
        assert all(got[s] == want[s] for s in range(1, 9))


def test_broken_chain_link_found_at_resume(fast_overrides, run, capsys):
    """Corrupt a weight blob that the next residual builds on (step 4 is walked to rebuild
    step 8): found when the run resumes, which then starts a fresh chain."""
    path = str(run / "excp" / "step_00000004.excp")
    with StepReader(path, "step 4") as rd:
        entry = rd.footer["tensors"][0]["w"]
    with open(path, "r+b") as f:
        f.seek(entry["off"] + entry["len"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    _run(fast_overrides, run, ["train.steps=12"])
    out = capsys.readouterr().out
    assert "checksum" in out and "fresh chain" in out
    assert ExcpChain(str(run / "excp")).steps() == [8, 12]
    assert len(_set_aside(run)) == 1


@pytest.mark.parametrize("damaged_full", [False, True])
def test_restart_chain_option(fast_overrides, run, capsys, damaged_full):
    if damaged_full:   # resumed from the chain: the fresh chain starts from that state
        _truncate_full(run, [4, 8])
    _run(fast_overrides, run, ["train.steps=12", "checkpoint.excp.restart_chain=true"])
    out = capsys.readouterr().out
    assert "fresh chain" in out
    chain = ExcpChain(str(run / "excp"))
    assert chain.steps() == [8, 12] and chain.stats()[8]["lossless"]
    assert len(_set_aside(run)) == 1


def _edit_opt_scalars(workdir):
    path = workdir / "excp" / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["steps"]:
        scalars = entry["meta"]["opt_scalars"]
        entry["meta"]["opt_scalars"] = {k: [x + 100 if isinstance(x, int) else x for x in v]
                                        for k, v in scalars.items()}
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def test_edited_opt_scalars_is_a_checksum_error(fast_overrides, run, tmp_path, capsys):
    _edit_opt_scalars(run)
    assert cli_main(["excp", "restore", "--workdir", str(run), "--step", "4",
                     "--out", str(tmp_path / "restored")]) == 2
    assert "checksum" in capsys.readouterr().err
    # training: step 4's full checkpoint is damaged too, so nothing can give step 4
    _truncate_full(run, [4])
    with pytest.raises(CheckpointError, match="checksum"):
        _run(fast_overrides, run, ["train.steps=12", "checkpoint.resume_step=4"])


def test_relative_workdir_trains_and_compresses(fast_overrides, tmp_path, monkeypatch):
    """A workdir given relative to the working directory: the ExCP writer reads each full
    checkpoint through Orbax, which takes absolute paths only."""
    monkeypatch.chdir(tmp_path)
    _run(fast_overrides, "run", ["train.steps=4"])
    assert ExcpChain(os.path.join("run", "excp")).steps() == [4]
