"""LUD training (kyx/train/lud.py): units mined with the source model, a fraction of the
records reconfigured with the placeholder (inputs only), cached mining, CLI run + resume."""
import glob
import math
import os

import numpy as np

from kyx.cli import main as cli_main
from kyx.data.tokenizer import PLACEHOLDER
from kyx.metrics import read_metrics
from kyx.train import lud, registry


def cfg_path():
    return os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lud.py") + ":tiny"


def test_reconfigure_replaces_unit_inputs_of_chosen_records_only():
    tokens = np.arange(10, 30, dtype=np.int32)
    key = lud.record_key(tokens)
    element = {"tokens": tokens, "targets": tokens + 1, "mask": np.ones(20, np.float32)}
    units = {key: np.asarray([3, 4, 9], np.int32)}
    out = lud.Reconfigure(units, ph=8, fraction=1.0, seed=0)(element)
    assert out["tokens"].tolist() == [8 if i in (3, 4, 9) else 10 + i for i in range(20)]
    assert out["targets"].tolist() == element["targets"].tolist()      # targets stay
    assert element["tokens"][3] == 13                                   # input not mutated
    assert lud.Reconfigure(units, 8, 0.0, 0)(element) is element        # fraction 0
    assert lud.Reconfigure({}, 8, 1.0, 0)(element) is element           # unmined record
    keys = [lud.record_key(np.arange(i, i + 5)) for i in range(2000)]
    share = np.mean([lud.Reconfigure({}, 8, 0.3, 1).chosen(k) for k in keys])
    assert abs(share - 0.3) < 0.04


def test_lud_trainer_end_to_end(post_overrides, pretrained, post_config, tmp_path, capsys):
    overrides = post_overrides + [f"init_from={pretrained}", "lud.alpha=0.0",
                                  "lud.repetition_control=false", "lud.fraction=1.0",
                                  "lud.mine_batch=32"]
    cfg = post_config("lud", overrides)
    trainer = registry.build(cfg)
    ph = trainer.tokenizer.special_id(PLACEHOLDER)
    assert ph == 8
    cache = glob.glob(os.path.join(cfg.data.data_dir, "lud", "units_*.npz"))
    assert len(cache) == 1 and os.path.exists(cache[0] + ".sha256")
    with np.load(cache[0]) as z:
        mined = {k: z[k] for k in z.files}
    assert len(mined) >= 32 and sum(len(v) for v in mined.values()) > 0
    seen = 0
    for _ in range(20):  # a 4-step model predicts few true tokens: units are sparse
        b = next(trainer.train_iter)
        assert not (b["targets"] == ph).any()            # an input, never a target
        inside = (b["tokens"] == ph) & (b["segment_ids"] > 0)
        # a placeholder input sits inside a response: its target is learned
        assert (b["loss_mask"][inside] > 0).all()
        seen += int(inside.sum())
        if seen:
            break
    assert seen > 0, "no reconfigured (placeholder) input in 20 training batches"

    capsys.readouterr()
    args = ["train", "--config", cfg_path(), "--workdir", str(tmp_path)]
    args += [f"--config.{o}" for o in overrides + ["train.eval_every=2", "train.steps=2"]]
    assert cli_main(args) == 0
    assert "LUD mining" not in capsys.readouterr().out             # the cache was reused
    rows = read_metrics(tmp_path)
    assert sorted(r["step"] for r in rows if "train/loss" in r) == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert any("eval/loss" in r for r in rows)

    # decoding with LUD from Python and the CLI; alpha = 1 is plain greedy decoding
    import kyx
    loaded = kyx.load(str(tmp_path))
    prompts = ["Return the sum.", "Parse the header."]
    plain = loaded.generate(prompts, max_tokens=8, temperature=0.0, chat=True)
    assert loaded.generate(prompts, max_tokens=8, temperature=0.0, chat=True,
                           lud={"k": 3, "alpha": 1.0}) == plain
    assert cli_main(["sample", "--workdir", str(tmp_path), "--prompt", "def f():", "--chat",
                     "--lud", "--lud-alpha", "0.5", "--max-tokens", "6",
                     "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("user: def f():\nassistant: ")
