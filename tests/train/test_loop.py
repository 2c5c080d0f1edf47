"""The shared training loop: resume, preemption, corruption fallback, NaN policy, init_from."""
import json
import os
import signal

import jax
import numpy as np
import pytest

import kyx
from kyx import config as config_lib
from kyx.cli import main as cli_main
from kyx.metrics import read_metrics
from kyx.train import loop, pretrain
from kyx.train.loop import NonFiniteLoss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


def _run(overrides, workdir, extra=()):
    cfg = config_lib.load(PRETRAIN + ":tiny", list(overrides) + list(extra))
    return loop.run(pretrain.build(cfg), str(workdir))


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_uninterrupted_losses(fast_overrides, small_corpus,
                                                             tmp_path, kill_and_resume):
    """Bit-exact per-step losses after kill -9 (ExCP off; the ExCP-on twin with one corpus
    is tests/checkpoint/test_excp_sigkill.py), here on a two-source data mixture, whose
    per-source evaluation is checked on the way."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(6):
        (notes / f"n{i}.txt").write_text(f"note {i}: " + "some plain words. " * (40 + 9 * i))
    mixture = {"code": {"name": "text_files", "path": small_corpus, "weight": 3.0},
               "notes": {"name": "text_files", "path": str(notes), "weight": 1.0,
                         "min_val_files": 2}}
    # killed after step 10: checkpoint 8 is committed (sync saves)
    ref_dir, killed_dir = kill_and_resume("pretrain", tmp_path, fast_overrides + [
        "train.steps=14", f"data.mixture={json.dumps(mixture)}"], 10)
    ref_losses, got = _losses(ref_dir), _losses(killed_dir)
    assert sorted(got) == list(range(1, 15))
    assert got == ref_losses  # bit-exact per-step losses
    rows = {r["step"]: r for r in read_metrics(ref_dir)}
    for step in (6, 12, 14):  # train.eval_every=6, and the end
        assert {"eval/loss", "eval/code/loss", "eval/notes/loss"} <= set(rows[step])
    # the pooled loss is the token-weighted mean of the sources'
    r = rows[14]
    pooled = ((r["eval/code/loss"] * r["eval/code/tokens"] + r["eval/notes/loss"]
               * r["eval/notes/tokens"]) / (r["eval/code/tokens"] + r["eval/notes/tokens"]))
    assert r["eval/loss"] == pytest.approx(pooled, rel=1e-5)
    # per-position statistics (pooled and per source): the same records as uninterrupted
    def eval_stats(workdir):
        rows = [json.loads(x) for x in open(workdir / "eval_stats.jsonl").read().splitlines()]
        return {(r["step"], r.get("source")): r for r in rows}
    ref_stats = eval_stats(ref_dir)
    assert set(ref_stats) == {(s, src) for s in (6, 12, 14) for src in (None, "code", "notes")}
    assert eval_stats(killed_dir) == ref_stats


@pytest.mark.slow
def test_sigterm_saves_and_exits(fast_overrides, tmp_path, train_process, wait_for_step):
    proc = train_process("pretrain", tmp_path, fast_overrides + ["train.steps=100000"])
    wait_for_step(tmp_path, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out  # Preempted: distinct from done (0) and errors (1, 2)
    assert "received signal" in out and "Run the same command again to resume" in out
    assert "done:" not in out
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert steps and steps[-1] == max(_losses(tmp_path))


def test_resume_corrupted_latest_falls_back(fast_overrides, tmp_path, capsys):
    _run(fast_overrides, tmp_path, ["train.steps=8"])
    ckpt8 = tmp_path / "checkpoints" / "8" / "state"
    for root, _, files in os.walk(ckpt8):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    _run(fast_overrides, tmp_path, ["train.steps=10"])
    out = capsys.readouterr().out
    assert "checkpoint step 8" in out and "falling back" in out
    assert "resumed from" in out and out.split("resumed from")[1].split()[0].endswith("/4")
    assert max(_losses(tmp_path)) == 10


def test_nan_policy_skip_and_stop(fast_overrides, tmp_path):
    def poisoned(cfg):
        trainer = pretrain.build(cfg)
        inner = trainer.train_iter

        class Poison:
            n = 0

            def __next__(self):
                batch = next(inner)
                Poison.n += 1
                if Poison.n == 3:
                    batch = {**batch, "loss_mask": batch["loss_mask"] * np.nan}
                return batch

            def get_state(self):
                return inner.get_state()

            def set_state(self, s):
                inner.set_state(s)
        trainer.train_iter = Poison()
        return trainer

    cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + ["train.steps=5"])
    loop.run(poisoned(cfg), str(tmp_path / "skip"))
    rows = {r["step"]: r for r in read_metrics(tmp_path / "skip") if "train/loss" in r}
    assert rows[3]["train/skipped"] == 1.0 and np.isnan(rows[3]["train/loss"])
    assert all(rows[s]["train/skipped"] == 0.0 and np.isfinite(rows[s]["train/loss"])
               for s in (1, 2, 4, 5))
    cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + ["train.steps=5",
                                                                "train.nan_policy=stop"])
    with pytest.raises(NonFiniteLoss, match="non-finite loss/gradient at step 3"):
        loop.run(poisoned(cfg), str(tmp_path / "stop"))


def test_init_from_loads_params_only(fast_overrides, tmp_path):
    _run(fast_overrides, tmp_path / "a", ["train.steps=4"])
    _run(fast_overrides, tmp_path / "b",
         ["train.steps=1", f"init_from={tmp_path / 'a'}", "optim.lr=0.0"])
    a, b = kyx.load(str(tmp_path / "a")), kyx.load(str(tmp_path / "b"))
    assert b.config.init_from == str(tmp_path / "a")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    text = b.generate("import ", max_tokens=8, temperature=0.0)
    assert isinstance(text, str)


def test_cli_unknown_key_suggests(fast_overrides, tmp_path, capsys):
    code = cli_main(["train", "--config", PRETRAIN + ":tiny", "--workdir", str(tmp_path),
                     "--config.model.num_layer=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.num_layers" in err
    assert not os.path.exists(tmp_path / "checkpoints")


def test_train_writes_artifacts_and_sample_cli(fast_overrides, tmp_path, capsys):
    # an evaluation at every step after a 1-step warmup: the scaling hook (kyx/scaling)
    # forecasts from the 4th evaluation after warmup (step 5) on
    _run(fast_overrides, tmp_path, ["train.steps=6", "train.eval_every=1",
                                    "optim.warmup_steps=1", "scaling.predict_from=0.5"])
    names = set(os.listdir(tmp_path))
    assert {"config.json", "metrics.jsonl", "tokenizer.model", "loss_curve.png",
            "eval_stats.jsonl", "tb", "checkpoints", "scaling.png"} <= names
    rows = read_metrics(tmp_path)
    assert any("eval/loss" in r and "train/loss" in r for r in rows if r["step"] == 6)
    forecasts = {r["step"]: r for r in rows if "scaling/predicted_final_loss" in r}
    assert sorted(forecasts) == [5, 6]
    assert all(np.isfinite(r["scaling/predicted_final_loss"]) and
               np.isfinite(r["scaling/kaplan_final_loss"]) for r in forecasts.values())
    lines = open(tmp_path / "eval_stats.jsonl").read().splitlines()
    stats = json.loads(lines[-1])
    assert len(lines) == 6 and stats["step"] == 6
    assert len(stats["per_position_loss_sum"]) == 32 and len(stats["continued_count"]) == 32
    # document starts + continuation pieces are every validation token, and their sums
    # are the eval loss
    eval_row = next(r for r in rows if r["step"] == 6 and "eval/loss" in r)
    tokens = sum(stats["per_position_count"]) + sum(stats["continued_count"])
    assert sum(stats["per_position_count"]) > 0 and tokens == eval_row["eval/tokens"]
    total = sum(stats["per_position_loss_sum"]) + sum(stats["continued_loss_sum"])
    assert total / tokens == pytest.approx(eval_row["eval/loss"], rel=1e-5)
    resolved = config_lib.load_json(tmp_path / "config.json")
    assert resolved.model.d_model == 32
    capsys.readouterr()  # drop the training output (tfds prints when it builds the corpus)
    assert cli_main(["sample", "--workdir", str(tmp_path), "--prompt", "def ",
                     "--max-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")
