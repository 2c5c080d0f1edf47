"""The `jrt` trainer (kyx/train/jrt.py): the pretraining run with the JRT-RNN loss; M from
the model or the loss section; the mask token is the tokenizer's reserved placeholder,
absent from every target; eval counts only positions >= M."""
import os

import numpy as np
import pytest

from kyx import config as config_lib
from kyx.data.tokenizer import PLACEHOLDER
from kyx.errors import ConfigError
from kyx.metrics import read_metrics
from kyx.train import jrt, loop, registry

JRT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "jrt.py")


def test_prefix_length_rules():
    cfg = config_lib.load(JRT + ":tiny")
    assert jrt.prefix_len(cfg) == 32 and cfg.trainer == "jrt"
    assert cfg.loss.jrt_mlm_weight == 0.25 and cfg.loss.jrt_mask_rate == 0.15
    cfg.loss.jrt_prefix_len = 0
    with pytest.raises(ConfigError, match="needs a prefix length M >= 1"):
        jrt.prefix_len(cfg)
    cfg.loss.jrt_prefix_len = 128
    with pytest.raises(ConfigError, match="leaves no next-token targets"):
        jrt.prefix_len(cfg)
    cfg.model.pla_prefix_len = 16      # a model with prefix linear attention layers
    cfg.loss.jrt_prefix_len = 0
    assert jrt.prefix_len(cfg) == 16
    cfg.loss.jrt_prefix_len = 8
    with pytest.raises(ConfigError, match="set only one"):
        jrt.prefix_len(cfg)
    bad = config_lib.load(JRT + ":tiny", ["loss.jrt_mask_rate=1.5", "loss.jrt_prefix_len=0"])
    with pytest.raises(ConfigError) as e:
        registry.resolve(bad)
    assert "loss.jrt_mask_rate = 1.5" in str(e.value)
    assert "loss.jrt_prefix_len = 0: JRT training needs a prefix length" in str(e.value)


@pytest.mark.slow   # one compile + 2 steps + an eval pass, ~20 s on 2 cores
def test_two_step_run(fast_overrides, tmp_path):
    cfg = config_lib.load(JRT + ":tiny", fast_overrides + [
        "train.steps=2", "train.eval_every=2", "loss.jrt_prefix_len=8",
        "loss.jrt_mask_rate=0.5"])
    trainer = registry.build(cfg)
    tok = trainer.tokenizer
    assert jrt.mask_id(tok) == jrt.KYX_MASK_ID == tok.special_id(PLACEHOLDER)
    batch = next(iter(trainer.train_iter))
    assert not (batch["targets"][batch["loss_mask"] > 0] == jrt.KYX_MASK_ID).any()
    assert not (batch["tokens"] == jrt.KYX_MASK_ID).any()
    loop.run(trainer, str(tmp_path))
    rows = read_metrics(tmp_path)
    train = [r for r in rows if "train/jrt/mlm" in r]
    assert train and all(np.isfinite(r["train/jrt/mlm"]) and r["train/jrt/masked_tokens"] > 0
                         for r in train)
    for r in train:
        assert r["train/loss"] == pytest.approx(
            r["train/jrt/ntp"] + 0.25 * r["train/jrt/mlm"], rel=1e-5)
    ev = [r for r in rows if "eval/loss" in r][-1]
    assert ev["step"] == 2 and np.isfinite(ev["eval/loss"])
    # eval counts targets at positions >= 8 only: fewer than the loss mask's all
    from kyx.data import pipeline
    corpus, tok = pipeline.prepare(cfg.data)
    batches = list(pipeline.make_iterator(cfg.data, corpus, tok, "validation",
                                          **pipeline.process_split()))
    want = sum(float((b["loss_mask"] * (b["positions"] >= 8)).sum()) for b in batches)
    assert ev["eval/tokens"] == want < sum(float(b["loss_mask"].sum()) for b in batches)


@pytest.mark.slow   # the shared 4-step pretraining fixture + one sampling compile
def test_sample_jrt_prompts_end_to_end(pretrained, tmp_path, capsys):
    import json

    from kyx.cli import main as cli_main
    from kyx.data.jrt import jrt_prompt

    qa = tmp_path / "qa.jsonl"
    records = [{"context": "x = 1\ny = 2", "question": "x ="}, {"context": "def f", "question": "f"}]
    qa.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    argv = ["sample", "--workdir", pretrained, "--prompts", str(qa), "--out", str(out), "--jrt",
            "--max-tokens", "3", "--temperature", "0"]
    assert cli_main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [jrt_prompt(r["context"], r["question"])
                                           for r in records]
    assert rows[0]["prompt"] == "x = 1\ny = 2\nx = 1\ny = 2\nx ="
    assert all(r["settings"]["jrt"] == "{context}\n{context}\n{question}" for r in rows)
    capsys.readouterr()
    assert cli_main(argv) == 0 and "already written" in capsys.readouterr().out
    # without --jrt the records are not prompt records: an error, nothing written
    assert cli_main(["sample", "--workdir", pretrained, "--prompts", str(qa), "--out",
                     str(out), "--max-tokens", "3", "--temperature", "0"]) == 2
