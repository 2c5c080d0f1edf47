"""Nothing silently wrong: damaged checkpoint bytes and tokenizers, two runs on one
workdir, a changed model config on resume, read-only and empty workdirs, preemption and
non-finite outcomes. Each test reproduces a way kyx used to hand back wrong numbers or a
traceback, and checks that nothing already written is lost."""
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import kyx
from kyx import config as config_lib
from kyx.checkpoint import digest
from kyx.checkpoint.manager import Checkpointer
from kyx.cli import main as cli_main
from kyx.errors import CheckpointError, IntegrityError, WorkdirBusy
from kyx.metrics import read_metrics
from kyx.train import loop, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# its trained workdir is a module fixture: one xdist worker builds it (pytest.ini loadgroup)
pytestmark = pytest.mark.xdist_group("test_integrity")
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


def _run(overrides, workdir, extra=()):
    cfg = config_lib.load(PRETRAIN + ":tiny", list(overrides) + list(extra))
    return loop.run(pretrain.build(cfg), str(workdir))


@pytest.fixture(scope="module")
def trained(fast_overrides, tmp_path_factory):
    """An 8-step tiny run with checkpoints 4 and 8 (copied by each test that damages it)."""
    workdir = tmp_path_factory.mktemp("trained")
    _run(fast_overrides, workdir, ["train.steps=8"])
    return workdir


@pytest.fixture
def workdir(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _raw_state(step_dir):
    """The state as Orbax reads it without kyx's checks (what kyx.load used to return)."""
    import orbax.checkpoint as ocp
    tree = Checkpointer(os.path.dirname(step_dir), read_only=True).state_tree(
        int(os.path.basename(step_dir)))
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    state = ocp.PyTreeCheckpointer().restore(
        os.path.join(step_dir, "state"),
        args=ocp.args.PyTreeRestore(item=abstract, restore_args=args))
    return {digest.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _silently_damage_params(step_dir):
    """Flip one bit in the checkpoint's data files where Orbax still reads it without error
    but returns other params values (the issue's reproduction); returns the damaged leaves."""
    clean = _raw_state(step_dir)
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
             for f in fs if os.path.basename(r) == "d"]
    for path in sorted(files, key=os.path.getsize, reverse=True):
        original = open(path, "rb").read()
        for fraction in np.linspace(0.05, 0.95, 19):
            data = bytearray(original)
            data[int(len(data) * fraction)] ^= 0x10
            open(path, "wb").write(bytes(data))
            try:
                damaged = _raw_state(step_dir)
            except Exception:
                continue
            changed = [n for n, x in damaged.items() if not np.array_equal(x, clean[n])]
            if any("/params/" in n for n in changed):
                return changed
        open(path, "wb").write(original)
    raise AssertionError("no silent params corruption found")


def _tree(workdir):
    """{relative path: bytes} of every file (to show that nothing was rewritten)."""
    out = {}
    for r, _, fs in os.walk(workdir):
        for f in fs:
            p = os.path.join(r, f)
            out[os.path.relpath(p, workdir)] = open(p, "rb").read()
    return out


def test_digest_detects_any_single_word_change():
    x = np.arange(4096, dtype=np.float32).reshape(64, 64)
    base = digest.array_digests({"x": x, "b": np.ones(3, np.int8)})
    for i in (0, 1, 777, 4095):
        y = x.copy()
        y.view(np.uint32).reshape(-1)[i] ^= 1 << (i % 32)
        assert digest.array_digests({"x": y, "b": np.ones(3, np.int8)})["x"] != base["x"]
    swapped = x.copy().reshape(-1)
    swapped[[3, 5]] = swapped[[5, 3]]  # same values, other positions
    assert digest.array_digests({"x": swapped.reshape(64, 64)})["x"] != base["x"]
    # sharded on the 8-device mesh: the same digest as on the host
    mesh = jax.make_mesh((8,), ("d",))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
    assert digest.array_digests({"x": sharded})["x"] == base["x"]


def test_flipped_checkpoint_bits_are_an_error_to_readers_and_a_fallback_to_training(
        workdir, fast_overrides, capsys):
    damaged = _silently_damage_params(str(workdir / "checkpoints" / "8"))
    assert damaged  # Orbax alone reads these bytes as other weights
    # readers: a clear error naming the step and the other steps, never the wrong weights
    with pytest.raises(CheckpointError, match=r"checkpoints/8 is corrupted.*steps: \[4\]"):
        kyx.load(str(workdir))
    assert kyx.load(str(workdir), step=4) is not None
    assert cli_main(["sample", "--workdir", str(workdir), "--prompt", "def "]) == 2
    assert "is corrupted" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is corrupted"):
        _run(fast_overrides, workdir.parent / "child", ["train.steps=1",
                                                        f"init_from={workdir}"])
    assert cli_main(["excp", "compress", "--workdir", str(workdir)]) == 2
    assert "checkpoints/8 is corrupted" in capsys.readouterr().err
    shutil.rmtree(workdir / "excp", ignore_errors=True)
    # training: the damaged step is reported and skipped, the run resumes from step 4
    _run(fast_overrides, workdir, ["train.steps=10"])
    out = capsys.readouterr().out
    assert "checkpoints/8 is corrupted" in out and "falling back" in out
    assert out.split("resumed from")[1].split()[0].endswith("/4")
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    assert all(np.isfinite(r["train/loss"]) and r["train/skipped"] == 0 for r in rows)


def test_flipped_tokenizer_bit_is_an_error(workdir):
    path = workdir / "tokenizer.model"
    assert (workdir / "tokenizer.model.sha256").exists()
    data = bytearray(path.read_bytes())
    i = re.compile(rb"[a-z]{4,}").search(bytes(data), len(data) // 2).start()
    data[i] ^= 0x01  # another letter in one piece: SentencePiece still loads the model
    path.write_bytes(bytes(data))
    from kyx.data.tokenizer import SentencePieceTokenizer
    assert SentencePieceTokenizer(bytes(data)).encode("def main():") is not None
    with pytest.raises(IntegrityError, match="tokenizer.model is damaged"):
        kyx.load(str(workdir))


def test_second_run_on_a_locked_workdir_fails_and_a_killed_holder_does_not_block(
        workdir, fast_overrides, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from kyx.checkpoint.workdir_lock import WorkdirLock\n"
         f"WorkdirLock({str(workdir)!r}, 'train').acquire()\n"
         "print('locked', flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _tree(workdir)
        with pytest.raises(WorkdirBusy, match=f"pid {holder.pid}"):
            _run(fast_overrides, workdir, ["train.steps=12"])
        args = ["train", "--config", PRETRAIN + ":tiny", "--workdir", str(workdir)]
        args += [f"--config.{o}" for o in fast_overrides + ["train.steps=12"]]
        assert cli_main(args) == 2
        assert "in use by `kyx train`" in capsys.readouterr().err
        assert _tree(workdir) == before  # nothing of the first run was touched
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    _run(fast_overrides, workdir, ["train.steps=9"])
    assert max(r["step"] for r in read_metrics(workdir)) == 9


@pytest.mark.parametrize("override,says", [
    ("model.d_model=64", "model.d_model: 32 in the checkpoint, 64 now"),
    # a changed storage dtype (moments here) is a changed layout too, not "corrupted"
    ("optim.state_dtype=bfloat16", "optim.state_dtype: '' in the checkpoint, 'bfloat16' now"),
])
def test_resume_with_changed_model_config_names_the_keys_and_loses_nothing(
        workdir, fast_overrides, capsys, override, says):
    before = _tree(workdir)
    args = ["train", "--config", PRETRAIN + ":tiny", "--workdir", str(workdir)]
    args += [f"--config.{o}" for o in fast_overrides + ["train.steps=12", override]]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and says in err, err
    assert "unreadable or corrupted" not in err and "Traceback" not in err
    after = _tree(workdir)
    assert {k: v for k, v in after.items() if k != ".kyx.lock"} == {
        k: v for k, v in before.items() if k != ".kyx.lock"}


def test_sample_on_a_workdir_without_checkpoints_says_so(workdir, capsys):
    shutil.rmtree(workdir / "checkpoints")
    assert cli_main(["sample", "--workdir", str(workdir), "--prompt", "def "]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint yet" in err and "init_from" not in err


def test_read_only_workdir_is_a_clear_error(workdir, fast_overrides, capsys, monkeypatch):
    import errno

    from kyx.checkpoint import workdir_lock
    real_open = os.open

    def read_only(path, flags, *a):
        if str(path).startswith(str(workdir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *a)
    monkeypatch.setattr(workdir_lock.os, "open", read_only)
    args = ["train", "--config", PRETRAIN + ":tiny", "--workdir", str(workdir)]
    args += [f"--config.{o}" for o in fast_overrides + ["train.steps=12"]]
    assert cli_main(args) == 2
    assert "cannot write to the workdir" in capsys.readouterr().err


def test_mostly_skipped_run_with_nan_eval_fails(fast_overrides, tmp_path, capsys):
    """nan_policy=skip with most steps non-finite used to end with "done:" and exit 0."""
    cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + ["train.steps=6"])
    trainer = pretrain.build(cfg)
    inner, eval_batches = trainer.train_iter, trainer.eval_batches

    class Poison:
        def __next__(self):
            batch = next(inner)
            return {**batch, "loss_mask": batch["loss_mask"] * np.nan}

        def get_state(self):
            return inner.get_state()

        def set_state(self, s):
            inner.set_state(s)
    trainer.train_iter = Poison()
    trainer.eval_batches = lambda: ({**b, "loss_mask": b["loss_mask"] * np.nan}
                                    for b in eval_batches())
    with pytest.raises(loop.NonFiniteLoss, match="final evaluation is not finite"):
        loop.run(trainer, str(tmp_path))
    assert "6 of 6 steps (100%) were skipped" in capsys.readouterr().out
    assert os.path.isdir(tmp_path / "checkpoints" / "6")  # saved before failing


def test_edited_config_json_is_caught_by_its_digest(workdir, capsys):
    """Valid JSON with another value (a flipped digit) used to build another model."""
    path = workdir / "config.json"
    path.write_text(path.read_text().replace('"d_model": 32', '"d_model": 33'))
    loaded = kyx.load(str(workdir))
    assert loaded.config.model.d_model == 32  # the checkpoint's own copy of the config
    assert "config.json is damaged" in capsys.readouterr().out


def test_sidecar_digest_follows_the_file(tmp_path):
    from kyx.fileio import atomic_write, read_checked
    path = tmp_path / "f.json"
    atomic_write(path, "one", checksum=True)
    atomic_write(path, "two")  # rewritten without a digest: the old one must not stay
    assert read_checked(path) == b"two" and not (tmp_path / "f.json.sha256").exists()
    atomic_write(path, "three", checksum=True)
    path.write_text("thrEe")
    with pytest.raises(IntegrityError, match="f.json is damaged"):
        read_checked(path)


def test_checkpoint_without_digest_loads_with_a_warning(workdir, capsys):
    shutil.rmtree(workdir / "checkpoints" / "8" / "digest")
    assert kyx.load(str(workdir)) is not None
    assert "checkpoints/8 has no digest" in capsys.readouterr().out
