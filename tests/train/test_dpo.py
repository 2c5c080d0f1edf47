"""DPO family: log 2 at step 0, frozen vs precomputed reference (and resume), 8 devices =
1, and each objective's value at policy = reference on real batches."""
import math
import os

import pytest

from kyx.metrics import read_metrics
from kyx.train import loop, registry


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_dpo_log2_and_reference_paths_agree(post_overrides, pretrained, post_config, tmp_path):
    base = post_overrides + [f"init_from={pretrained}", "train.eval_every=3",
                             "optim.lr=1e-3"]
    pre = post_config("dpo", base + ["reference=precomputed", "train.steps=6"])
    loop.run(registry.build(pre), str(tmp_path / "pre"))
    tables = os.listdir(os.path.join(pre.data.data_dir, "reference_logps"))
    assert tables, "precomputed reference log-probs are cached with the dataset"
    frozen = base + ["reference=frozen", "checkpoint.every=3"]
    loop.run(registry.build(post_config("dpo", frozen + ["train.steps=3"])),
             str(tmp_path / "frozen"))
    # resume restores the frozen reference from the checkpoint (TrainState.extra)
    loop.run(registry.build(post_config("dpo", frozen + ["train.steps=6"])),
             str(tmp_path / "frozen"))
    a, b = _losses(tmp_path / "pre"), _losses(tmp_path / "frozen")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert abs(a[1] - math.log(2.0)) < 1e-5  # policy == reference at step 0
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])
    evals = [r for r in read_metrics(tmp_path / "pre") if "eval/rewards/margin" in r]
    assert evals and all(math.isfinite(r["eval/loss"]) for r in evals)


def test_dpo_eight_devices_equal_one(post_overrides, pretrained, post_config, eight_vs_one):
    cfg = post_config("dpo", post_overrides + [
        f"init_from={pretrained}", "loss.nll_coef=0.2", "loss.mask_format_tokens=true",
        "optim.lr=1e-3"])
    trainer = registry.build(cfg)
    assert trainer.extra is not None  # frozen reference in the train state
    batches = [next(trainer.train_iter) for _ in range(2)]
    (m1, _), _ = eight_vs_one(trainer, batches)
    assert abs(m1[0]["loss"] - math.log(2.0) - 0.2 * m1[0]["nll_chosen"]) < 1e-5


# value of each objective when the policy equals the reference (β = τ = 0.1)
AT_REFERENCE = {
    "ipo": 25.0,                        # (0 − 1/(2τ))²
    "npo": 2 / 0.1 * math.log(2.0),     # (2/β) log(1 + 1)
    "kto": 0.5,                         # 1 − σ(0), z0 = 0
    "dpo": math.log(2.0),               # cDPO too: −(1−ε) log ½ − ε log ½
}


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", [
    ("ipo", []), ("npo", []), ("kto", []), ("dpo", ["loss.label_smoothing=0.1"]),
    ("simpo", []), ("orpo", [])])
def test_objectives_on_real_batches(name, extra, post_overrides, pretrained, post_config,
                                    steps_on_mesh):
    cfg = post_config("dpo", post_overrides + [f"init_from={pretrained}", f"loss.name={name}",
                                               "optim.lr=1e-3"] + extra)
    trainer = registry.build(cfg)
    assert (trainer.extra is None) == (name in ("simpo", "orpo"))
    metrics, _ = steps_on_mesh(trainer, [next(trainer.train_iter) for _ in range(2)])
    assert all(math.isfinite(m["loss"]) for m in metrics)
    if name in AT_REFERENCE:
        assert abs(metrics[0]["loss"] - AT_REFERENCE[name]) < 1e-4, metrics[0]["loss"]


@pytest.mark.parametrize("name", ["sft", "rm", "dpo"])
def test_presets_load_and_bad_configs_fail_clearly(name):
    import importlib.util

    from kyx import config as config_lib
    from kyx.errors import ConfigError

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for preset in module.PRESETS:
        cfg = config_lib.load(f"{path}:{preset}")
        assert cfg.trainer == name
        registry.build_step(cfg)  # model, optimizer and step build without data
    bad = {"sft": "data.records.source=nope", "rm": "loss.margin=huge",
           "dpo": "loss.name=nope"}[name]
    cfg = config_lib.load(f"{path}:tiny", [bad])
    with pytest.raises(ConfigError):
        if name == "sft":
            from kyx.data.preference_corpus import load_records
            load_records(cfg.data, "sft")
        else:
            registry.build_step(cfg)
