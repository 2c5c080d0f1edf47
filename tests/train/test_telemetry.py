"""A run's telemetry end to end: plain log lines without a tty, eval lines as they happen,
per-step L2 norms, the config as hyperparameters, a W&B offline run, a profiler trace;
and the norms of ``apply_update`` against optax.global_norm."""
import glob
import gzip
import json
import os
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kyx import config as config_lib
from kyx.errors import ConfigError
from kyx.metrics import read_metrics
from kyx.train import loop, pretrain, validation
from kyx.train.state import ModelState
from kyx.train.step import apply_update

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain.py")


def _wandb_records(path):
    """Protobuf records of a W&B ``.wandb`` file (LevelDB-log framing after a 7-byte
    header: 32 KiB blocks of chunks [crc u32, length u16, type u8 (1 full, 2 first,
    3 middle, 4 last)])."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    i, block, pending = 7, 32768, b""
    while i + 7 <= len(data):
        if block - i % block < 7:  # a block's tail too short for a header is padding
            i += block - i % block
            continue
        _, length, kind = struct.unpack("<IHB", data[i:i + 7])
        if length == 0 and kind == 0:
            i += block - i % block
            continue
        pending += data[i + 7:i + 7 + length]
        i += 7 + length
        if kind in (1, 4):
            yield pb.Record.FromString(pending)
            pending = b""


@pytest.mark.slow  # one 6-step training run (~15-25 s here) covering every point at once
def test_run_telemetry_without_a_tty(fast_overrides, tmp_path, capsys, monkeypatch):
    """Console lines, eval lines, norms, profiler trace and the W&B offline run (wandb is
    in the [test] extra) of one tiny run."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.makedirs(tmp_path / "wandb_dir")
    workdir = tmp_path / "run"
    cfg = config_lib.load(PRETRAIN + ":tiny", fast_overrides + [
        "train.steps=6", "train.log_every=2", "train.eval_every=3", "train.profile_steps=2:4",
        "metrics.wandb.project=kyx-test", "metrics.wandb.mode=offline"])
    loop.run(pretrain.build(cfg), str(workdir))
    out = capsys.readouterr().out

    # one plain line every log_every steps, eval results as they happen
    lines = [line for line in out.splitlines() if re.match(r"(step|eval) \d", line)]
    assert [line[:8] for line in lines] == ["step 2/6", "eval 3/6", "step 4/6", "step 6/6",
                                            "eval 6/6"]
    assert re.fullmatch(r"step 2/6 \| loss \d+\.\d{4} \| lr \d\.\de-\d\d \| [\d.]+k? tok/s"
                        r" \| ETA \d+:\d\d:\d\d", lines[0]), lines[0]
    assert re.fullmatch(r"eval 3/6 \| loss [\d.]+ \| perplexity [\d.]+ \| tokens \d+ \| "
                        r"bytes \d+ \| bits_per_byte [\d.]+", lines[1]), lines[1]

    # per-step norms, computed in the step
    rows = {r["step"]: r for r in read_metrics(workdir)}
    for s in range(1, 7):  # (step 1 has lr 0: warm-up)
        assert rows[s]["train/l2_params"] > 0 and rows[s]["train/l2_grads"] > 0
        assert (rows[s]["train/l2_updates"] > 0) == (s > 1)

    # the profiler trace of steps 2..3, annotated per step
    profile = workdir / "tb" / "plugins" / "profile"
    assert glob.glob(str(profile / "*" / "*.xplane.pb"))
    trace = json.load(gzip.open(glob.glob(str(profile / "*" / "*.trace.json.gz"))[0]))
    assert sorted(e["args"]["step_num"] for e in trace["traceEvents"]
                  if e.get("name") == "train") == ["2", "3"]

    # W&B offline run: config and every logged step
    files = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, sorted(glob.glob(str(tmp_path / "wandb_dir" / "**"), recursive=True))
    history, config = {}, {}
    for record in _wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            item = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item}
            history[item["_step"]] = item
        elif kind == "run":
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
    assert config["model"]["d_model"] == 32 and config["train"]["profile_steps"] == "2:4"
    assert sorted(history) == list(range(1, 7))
    for s, row in rows.items():
        for key in ("train/loss", "train/l2_params", "eval/loss"):
            if key in row:
                assert history[s][key] == pytest.approx(row[key], rel=1e-6)
    assert (workdir / "wandb_run_id").read_text().strip() in files[0]


def test_update_norms_match_optax_global_norm():
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25, -1.0])}
    grads = {"w": jnp.array([[0.1, 0.2], [-0.3, 0.4]]), "b": jnp.array([1.0, -2.0])}
    tx = optax.adamw(0.1, weight_decay=0.01)
    model = ModelState(params, tx.init(params))
    new, m = jax.jit(apply_update, static_argnums=3)(model, grads, jnp.float32(1.0), tx)
    delta = jax.tree.map(jnp.subtract, new.params, params)
    np.testing.assert_allclose(m["l2_grads"], optax.global_norm(grads), rtol=1e-6)
    np.testing.assert_allclose(m["l2_params"], optax.global_norm(new.params), rtol=1e-6)
    np.testing.assert_allclose(m["l2_updates"], optax.global_norm(delta), rtol=1e-5)
    assert m["skipped"] == 0 and m["l2_updates"] > 0

    # a non-finite loss: no update, so l2_updates is 0 and l2_params the old params' norm
    same, m = apply_update(model, grads, jnp.float32(jnp.nan), tx)
    assert m["skipped"] == 1 and m["l2_updates"] == 0
    np.testing.assert_allclose(m["l2_params"], optax.global_norm(params), rtol=1e-6)


@pytest.mark.parametrize("spec, problem", [
    ("10-15", "START:END"), ("15:10", "START < END"), ("0:7", "END must be <= train.steps"),
])
def test_profile_steps_validated(spec, problem):
    cfg = pretrain.default_config()
    cfg.train.steps, cfg.train.profile_steps = 6, spec
    with pytest.raises(ConfigError, match=re.escape(problem)):
        validation.validate(cfg)
    cfg.train.profile_steps = "0:6"
    validation.validate(cfg)


def test_metrics_settings_validated():
    cfg = pretrain.default_config()
    cfg.metrics.sinks = ("jsonl", "tensorbord")
    cfg.metrics.wandb.mode = "ofline"
    with pytest.raises(ConfigError) as e:
        validation.validate(cfg)
    assert "did you mean tensorboard" in str(e.value) and "did you mean offline" in str(e.value)


def test_wandb_selected_but_not_installed(monkeypatch):
    import importlib.util

    cfg = pretrain.default_config()
    cfg.metrics.wandb.project = "p"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=re.escape("pip install 'kyx[wandb]'")):
        validation.validate(cfg)
