"""SFT trainer: CLI run with negative feedback, resume, eval metrics, 8 devices = 1."""
import json
import math
import os

from kyx.cli import main as cli_main
from kyx.metrics import read_metrics
from kyx.train import registry


def cfg_path(name):
    return os.path.join(os.path.dirname(__file__), "..", "..", "configs", f"{name}.py") + ":tiny"


def test_sft_negative_feedback_cli_resume(post_overrides, pretrained, post_config, tmp_path,
                                          capsys):
    cfg = post_config("sft", [])  # the tiny preset loads
    assert cfg.trainer == "sft" and not cfg.loss.negative_feedback
    args = ["train", "--config", cfg_path("sft"), "--workdir", str(tmp_path)]
    args += [f"--config.{o}" for o in post_overrides + [
        f"init_from={pretrained}", "loss.negative_feedback=true", "checkpoint.every=2",
        "train.eval_every=4"]]
    assert cli_main(args + ["--config.train.steps=4"]) == 0
    assert cli_main(args + ["--config.train.steps=5"]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = read_metrics(tmp_path)
    train = {r["step"]: r for r in rows if "train/loss" in r}
    assert sorted(train) == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r["train/loss"]) and r["train/neg_tokens"] > 0 for r in train.values())
    # the loss is CE + unlikelihood on negatives
    r = train[1]
    assert abs(r["train/loss"] - (r["train/ce"] + r["train/neg_unlikelihood"])) < 1e-5
    evals = [r for r in rows if "eval/neg_logp" in r]
    assert evals and evals[-1]["eval/neg_logp"] < 0 and evals[-1]["eval/loss"] > 0
    # the SFT policy samples in chat format from the CLI, stopping at end of turn
    capsys.readouterr()
    assert cli_main(["sample", "--workdir", str(tmp_path), "--prompt", "def f():", "--chat",
                     "--max-tokens", "6", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("user: def f():\nassistant: ")


def test_sft_eight_devices_equal_one(post_overrides, pretrained, post_config, eight_vs_one):
    cfg = post_config("sft", post_overrides + [f"init_from={pretrained}",
                                               "loss.negative_feedback=true"])
    trainer = registry.build(cfg)
    batches = [next(trainer.train_iter) for _ in range(2)]
    (m1, _), _ = eight_vs_one(trainer, batches)
    assert m1[0]["neg_tokens"] > 0 and m1[0]["neg_unlikelihood"] > 0


def test_sft_reads_jsonl_and_reports_malformed(post_overrides, post_config, tmp_path, capsys):
    rows = [{"prompt": f"def f{i}():", "response": f"    return {i}",
             "negatives": [f"    return {i}\n" * 3]} for i in range(20)]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join([json.dumps(r) for r in rows] + ["{oops", '{"prompt": 1}']))
    cfg = post_config("sft", post_overrides + [
        "data.records.source=jsonl", f"data.records.path={path}",
        "data.records.val_fraction=0.2", "loss.negative_feedback=true"])
    trainer = registry.build(cfg)
    assert "skipped 2 malformed of 22" in capsys.readouterr().out
    batch = next(trainer.train_iter)
    assert set(batch) == set(trainer.batch_axes)
    assert batch["loss_mask"].sum() > 0 and batch["neg_mask"].sum() > 0


def test_sft_with_moe_reports_per_layer_moe_metrics(post_overrides, post_config, steps_on_mesh):
    """The shared forward gives SFT the MoE aux loss and the per-layer metrics (incl. the
    routing-error flagged fraction) that pretraining logs."""
    cfg = post_config("sft", post_overrides + [
        "model.moe_num_experts=4", "model.moe_top_k=2", "model.moe_route_error_weight=0.01"])
    trainer = registry.build(cfg)
    metrics, _ = steps_on_mesh(trainer, [next(trainer.train_iter)])
    m = metrics[0]
    assert {"moe/loss", "moe/layer0/load_max", "moe/layer1/flagged_frac"} <= set(m)
    assert abs(m["loss"] - m["ce"] - m["moe/loss"]) < 1e-5
