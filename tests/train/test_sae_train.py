"""The ``sae`` trainer (kyx/analysis/sae_trainer.py, configs/sae.py): `kyx train` runs on an
activation buffer, checkpoints, resumes exactly, evaluates (held-out split and the LM
with the SAE spliced in); `kyx sae top-activations` reads the run; config mistakes are
ConfigErrors."""
import json
import os

import numpy as np
import pytest

from kyx import cli
from kyx import config as config_lib
from kyx.analysis.activation_buffer import write_buffer
from kyx.checkpoint.workdir import checkpoint_steps
from kyx.errors import ConfigError
from kyx.train import registry

from .conftest import config_path

SAE = config_path("sae") + ":tiny"


@pytest.fixture(scope="module")
def buffer(tmp_path_factory, pretrained):
    """A small buffer at the width of the pretrained model (d_model 32): sparse codes of
    a random dictionary plus noise."""
    rng = np.random.default_rng(0)
    dict_ad = rng.normal(size=(48, 32))
    codes = rng.random((2560, 48)) * (rng.random((2560, 48)) < 0.08)
    x = (codes @ dict_ad + 0.05 * rng.normal(size=(2560, 32))).astype(np.float32)
    path = str(tmp_path_factory.mktemp("acts"))
    write_buffer(path, x[:2048], {"site": "blocks.1.resid", "model_workdir": pretrained,
                                  "step": 4}, rows_per_shard=1000, val_nd=x[2048:])
    return path


def _args(pretrained, buffer, workdir, steps, extra=()):
    overrides = [f"sae.model_workdir={pretrained}", f"sae.buffer={buffer}",
                 "sae.n_latents=64", "sae.k=4", "sae.k_aux=16", "sae.dead_tokens=256",
                 "sae.init_sample=512", "sae.lm_eval.batches=1", "data.batch_size=128",
                 "data.eval_batches=2", f"train.steps={steps}", "train.log_every=1",
                 "train.eval_every=3", "train.measure_mfu=false", "checkpoint.every=3",
                 "checkpoint.async_save=false", *extra]
    return ["train", "--config", SAE, "--workdir", str(workdir)] + [
        f"--config.{o}" for o in overrides]


def _last(workdir):
    """The metrics of the last step (its rows merged: train, eval, the LM eval)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    last = {}
    for row in rows:
        if row["step"] == rows[-1]["step"]:
            last.update(row)
    return last


@pytest.mark.slow  # three `kyx train` runs (each compiles its step) + the LM eval: 20-30 s
def test_sae_train_checkpoints_resumes_and_evaluates(pretrained, buffer, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(_args(pretrained, buffer, straight, 6)) == 0
    no_lm = ["sae.lm_eval.batches=0"]  # the LM metrics are checked on the straight run
    assert cli.main(_args(pretrained, buffer, resumed, 3, no_lm)) == 0
    assert checkpoint_steps(str(resumed)) == [3]
    assert cli.main(_args(pretrained, buffer, resumed, 6, no_lm)) == 0  # resumes at step 3
    last_a, last_b = _last(straight), _last(resumed)
    for key in ("train/loss", "train/l0", "train/dead_fraction", "eval/nmse",
                "eval/explained_variance"):
        np.testing.assert_allclose(last_b[key], last_a[key], rtol=1e-5, err_msg=key)
    assert last_a["step"] == 6 and last_a["train/l0"] <= 4
    assert 0 < last_a["eval/nmse"] < 1.5 and last_a["eval/explained_variance"] < 1
    lm = {k: v for k, v in last_a.items() if k.startswith("eval/lm/")}
    assert set(lm) == {f"eval/lm/{k}" for k in (
        "ce_clean", "ce_sae", "ce_zero", "ce_mean", "loss_recovered_zero",
        "loss_recovered_mean", "delta_lm_loss")}
    assert np.isfinite(list(lm.values())).all()
    assert lm["eval/lm/delta_lm_loss"] == pytest.approx(
        lm["eval/lm/ce_sae"] - lm["eval/lm/ce_clean"])
    _check_top_activations_cli(str(straight), pretrained, capsys)


def _check_top_activations_cli(workdir, pretrained, capsys):
    """`kyx sae top-activations` on the trained SAE: contexts per latent, highest first;
    user mistakes are one-line errors."""
    capsys.readouterr()
    top = ["sae", "top-activations", "--workdir", workdir, "--top", "3", "--batches", "2"]
    assert cli.main(top + ["--latents", "0-2,7", "--json"]) == 0
    found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # after the logs
    assert sorted(found) == ["0", "1", "2", "7"]
    for contexts in found.values():
        values = [c["value"] for c in contexts]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert all(set(c) == {"value", "before", "token", "after"} for c in contexts)
    assert cli.main(top + ["--latents", "0,64"]) == 2
    assert "latents 0..63; out of range: [64]" in capsys.readouterr().err
    assert cli.main(["sae", "top-activations", "--workdir", pretrained]) == 2
    assert "not an SAE run" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("sae.kind=topp", "sae.kind = 'topp': must be one of topk, relu"),
    ("sae.k=100", "sae.k = 100 must be in"),
    ("sae.model_workdir=", "sae.model_workdir is empty"),
])
def test_sae_config_errors(pretrained, buffer, override, message):
    cfg = config_lib.load(SAE, [f"sae.model_workdir={pretrained}", f"sae.buffer={buffer}",
                                "sae.n_latents=64", override])
    with pytest.raises(ConfigError, match=message):
        registry.resolve(cfg)


def test_sae_step_latents_sharded_eight_devices_equal_one(pretrained, buffer, eight_vs_one):
    """The SAE step on the 8-device mesh of each rule preset (latents split over fsdp /
    fsdp x tensor) equals one device: params, stats-driven metrics, AuxK."""
    from jax.sharding import PartitionSpec as P

    from kyx import sharding
    from kyx.train import state as state_lib
    cfg = config_lib.load(SAE, [f"sae.model_workdir={pretrained}", f"sae.buffer={buffer}",
                                "sae.n_latents=64", "sae.k=4", "sae.k_aux=16",
                                "sae.dead_tokens=100", "sae.init_sample=512",
                                "sae.lm_eval.batches=0", "data.batch_size=64"])
    trainer = registry.build(cfg)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    shard, _ = state_lib.state_shardings(trainer.models, mesh, sharding.get_rules("fsdp"),
                                         trainer.stats)
    assert shard.models["sae"].params["w_enc_dl"].spec == P(None, "fsdp")
    assert shard.models["sae"].params["w_dec_ld"].spec == P("fsdp", None)
    batches = [next(trainer.train_iter) for _ in range(3)]
    (m1, _), _ = eight_vs_one(trainer, batches)
    assert m1[-1]["dead_fraction"] > 0 and m1[-1]["aux_k"] > 0  # the AuxK path ran


def test_sae_harvests_once_into_the_data_cache(pretrained, tmp_path):
    """With sae.buffer empty the trainer harvests the site into
    data_dir/activations/<key> once; a second build (e.g. another k) reads it back."""
    from kyx.analysis import sae_trainer
    cfg = config_lib.load(SAE, [
        f"sae.model_workdir={pretrained}", f"data.data_dir={tmp_path}", "sae.n_latents=64",
        "sae.k=4", "sae.init_sample=256", "sae.harvest.tokens=1024",
        "sae.harvest.batch_size=4", "sae.harvest.seq_len=32", "sae.harvest.val_fraction=0.25",
        "sae.lm_eval.batches=0", "data.batch_size=64", "data.eval_batches=1"])
    trainer = registry.build(cfg)
    path = sae_trainer.buffer_path(cfg)
    assert path.startswith(str(tmp_path / "activations"))
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert meta["site"] == "blocks.1.resid" and meta["splits"]["train"]["rows"] == 1024
    assert meta["splits"]["val"]["rows"] == 256
    assert next(trainer.train_iter)["x_nd"].shape == (64, 32)
    stamp = os.path.getmtime(os.path.join(path, "meta.json"))
    cfg.sae.k = 8
    registry.build(cfg)
    assert os.path.getmtime(os.path.join(path, "meta.json")) == stamp
