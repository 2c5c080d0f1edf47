"""kyx.train.validation: a trainer config is checked before anything runs; every problem
is reported at once, naming the key, the bad value and the valid range or values."""
import importlib.util
import os
import sys

import pytest

from kyx import config as config_lib
from kyx.cli import main as cli_main
from kyx.errors import ConfigError
from kyx.train import registry, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _path(name):
    return os.path.join(ROOT, "configs", f"{name}.py")


def _load(name, overrides=(), preset="tiny"):
    return config_lib.load(f"{_path(name)}:{preset}", list(overrides))


def _problems(name, overrides, preset="tiny"):
    with pytest.raises(ConfigError) as e:
        validation.validate(_load(name, overrides, preset))
    return str(e.value)


def _presets(name):
    spec = importlib.util.spec_from_file_location(f"_presets_{name}", _path(name))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(_path(name)))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(_path(name)))
    return list(module.PRESETS)


# the reproductions (item 8) and their classes: (config, override, what the
# message must say besides the key and the value)
CASES = [
    ("pretrain", "train.steps=0", ">= 1"),
    ("pretrain", "optim.lr=-1", ">= 0"),
    ("pretrain", "optim.lr=nan", "finite"),
    ("pretrain", "optim.warmup_steps=-3", ">= 0"),
    ("pretrain", "train.nan_policy=bogus", "skip, stop"),
    ("pretrain", "loss.name=bogus", "ce, mile"),
    ("pretrain", "checkpoint.every=-1", "0: only at the end"),
    ("pretrain", "train.eval_every=-5", "0: only at the end"),
    ("pretrain", "train.log_every=-1", "0: only at the end"),
    ("pretrain", "data.seq_len=256", "model.max_seq_len"),
    ("pretrain", "trainer=bogus", "pretrain, sft, rm, dpo, ppo"),
    ("pretrain", "mesh.rules=bogus", "dp, fsdp, fsdp_tp"),
    ("pretrain", "mesh.data=0", "-1"),
    ("pretrain", "model.dtype=bogus", "bfloat16"),
    ("pretrain", "model.param_dtype=bf16", "float32, bfloat16, float16 (did you mean bfloat16?)"),
    ("pretrain", "optim.state_dtype=float16", "'' (empty), float32, bfloat16"),
    ("pretrain", "model.param_dtype=float16", "second moment underflows"),
    ("ppo", "value_optim.state_dtype=fp32", "float32, bfloat16"),
    ("pretrain", "model.remat=bogus", "dots_no_batch"),
    ("pretrain", "model.d_model=0", ">= 1"),
    ("pretrain", "optim.schedule=bogus", "cosine, linear, constant"),
    ("pretrain", "optim.b2=1.5", "< 1"),
    ("pretrain", "optim.grad_accum=3", "data.batch_size"),
    ("pretrain", "checkpoint.keep=0", ">= 1"),
    ("pretrain", "checkpoint.excp.coder=bogus", "zstd, lzma"),
    ("pretrain", "checkpoint.excp.bits=3", "2, 4, 8"),
    ("pretrain", "data.name=bogus", "tfds:"),
    ("pretrain", "data.batch_size=0", ">= 1"),
    ("pretrain", "data.val_fraction=1.5", "< 1"),
    ("pretrain", "data.name=text_files", "data.path"),
    ("pretrain", "data.tokenizer.vocab_size=8192", "model.vocab_size = 4096"),
    ("pretrain", "model.num_heads=3", "model.num_kv_heads"),
    ("sft", "data.records.source=bogus", "mined, jsonl"),
    ("sft", "loss.neg_weight=-1", ">= 0"),
    ("lud", "lud.k=1", ">= 2"),
    ("pretrain", "scaling.a2=cosin", "did you mean cosine"),
    ("pretrain", "scaling.predict_from=2", "<= 1"),
    ("pretrain", "scaling.kind=bogus", "context, document"),
    ("lud", "lud.alpha=1.5", "<= 1"),
    ("lud", "loss.negative_feedback=True", "plain SFT loss"),
    ("rm", "loss.margin=bogus", "none, small, large"),
    ("dpo", "loss.name=bogus", "dpo, ipo"),
    ("dpo", "reference=bogus", "frozen, precomputed"),
    ("dpo", "loss.beta=0", "> 0"),
    ("dpo", "loss.label_smoothing=0.7", "< 0.5"),
    ("ppo", "rl.algorithm=bogus", "ppo, grpo"),
    ("ppo", "rl.kl_estimator=bogus", "k1, k3"),
    ("ppo", "rl.value=bogus", "critic, head"),
    ("ppo", "rl.value_init=bogus", "policy, reward"),
    ("ppo", "rl.top_p=0", "> 0"),
    ("ppo", "rl.gamma=2", "<= 1"),
    ("ppo", "reward.terms=bogus", "parses"),
    ("ppo", "value_optim.lr=-1", ">= 0"),
    ("ppo", "rl.max_new_tokens=100", "model.max_seq_len"),
    ("grpo", "rl.group_size=1", "GRPO"),
    ("colbert", "colbert.scoring=maxsum", "maxsim, mean_pool (did you mean maxsim?)"),
    ("colbert", "colbert.query_len=500", "model.max_seq_len"),
    ("colbert", "colbert.dim=0", ">= 1"),
    ("colbert", "data.records.source=jsonl", "mined"),
]


@pytest.mark.parametrize("name,override,says", CASES, ids=[f"{n}:{o}" for n, o, _ in CASES])
def test_bad_value_is_rejected_naming_key_value_and_valid_range(name, override, says):
    key, _, value = override.partition("=")
    text = _problems(name, [override])
    assert key in text and value in text and says in text, text


def test_every_problem_is_reported_at_once():
    text = _problems("pretrain", ["train.steps=0", "optim.lr=-1", "train.nan_policy=bogus",
                                  "loss.name=bogus", "checkpoint.every=-1", "data.seq_len=256"])
    for key in ("train.steps", "optim.lr", "train.nan_policy", "loss.name",
                "checkpoint.every", "data.seq_len"):
        assert key in text, text
    assert "6 problems" in text


def test_bf16_weights_with_float32_moments_are_valid():
    validation.validate(_load("pretrain", ["model.param_dtype=bfloat16",
                                           "optim.state_dtype=float32"]))


def test_every_zero_means_only_at_the_end():
    """0 is valid for every interval (the hook runs after the last step only)."""
    validation.validate(_load("pretrain", ["checkpoint.every=0", "train.eval_every=0",
                                           "train.log_every=0", "optim.lr=0"]))


@pytest.mark.parametrize("name", ["pretrain", "moe", "sft", "rm", "dpo", "ppo", "grpo",
                                  "lud", "colbert", "jrt"])
def test_every_preset_validates(name):
    for preset in _presets(name):
        validation.validate(_load(name, preset=preset))


def test_iterate_stage_sections_validate_and_name_their_prefix():
    cfg = _load("iterate")
    for stage in ("dpo", "ppo", "sft", "rm"):
        validation.validate(cfg[stage], prefix=f"{stage}.")
    cfg.dpo.train.steps = 0
    with pytest.raises(ConfigError, match=r"dpo\.train\.steps = 0"):
        validation.validate(cfg.dpo, prefix="dpo.")


def test_the_test_suites_fast_overrides_validate(fast_overrides):
    """The overrides the training tests use everywhere are a valid config."""
    validation.validate(_load("pretrain", fast_overrides))
    extra = ["data.seq_len=64", "model.max_seq_len=64", "data.records.max_train=64"]
    for name in ("sft", "rm", "dpo"):
        validation.validate(_load(name, fast_overrides + extra))
    for name in ("ppo", "grpo"):
        validation.validate(_load(name, fast_overrides + extra + [
            "data.seq_len=48", "rl.max_new_tokens=16", "data.batch_size=8"]))


def test_a_new_field_is_one_registration():
    cfg = _load("pretrain")
    with cfg.unlocked():
        cfg.train.my_every = -2
    validation.field("train.my_every", validation.every())
    try:
        with pytest.raises(ConfigError, match=r"train\.my_every = -2"):
            validation.validate(cfg)
    finally:
        validation.FIELDS.pop()


# ------------------------------------------------------------------ through the CLI

@pytest.fixture
def no_setup(monkeypatch):
    """Fails the test if `kyx train` gets as far as building the trainer (data, model)."""
    def reached(cfg):
        raise AssertionError("kyx train reached trainer set-up with an invalid config")
    monkeypatch.setattr(registry, "trainer_module",
                        lambda name: type("Stub", (), {"build": staticmethod(reached)}))


@pytest.mark.parametrize("overrides,keys", [
    (["train.steps=0"], ["train.steps"]),
    (["checkpoint.every=-1", "train.eval_every=-1"], ["checkpoint.every", "train.eval_every"]),
    (["loss.name=bogus"], ["loss.name", "ce, mile"]),
    (["train.nan_policy=bogus", "optim.lr=-1"], ["train.nan_policy", "skip, stop", "optim.lr"]),
    (["data.seq_len=256"], ["data.seq_len", "model.max_seq_len = 128"]),
    (["model.param_dtype=bf16", "optim.state_dtype=f32"],
     ["model.param_dtype", "float32, bfloat16, float16", "optim.state_dtype"]),
], ids=["steps0", "every", "loss", "nan_lr", "seq_len", "dtypes"])
def test_cli_train_rejects_before_setup(overrides, keys, tmp_path, capsys, no_setup):
    workdir = tmp_path / "run"
    code = cli_main(["train", "--config", _path("pretrain") + ":tiny", "--workdir", str(workdir),
                     *[f"--config.{o}" for o in overrides]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: invalid config") and "Traceback" not in err
    for key in keys:
        assert key in err, err
    assert not workdir.exists()
