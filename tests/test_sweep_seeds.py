"""experiments/sweep.py --seeds: per-seed workdirs and overrides, mean ± std (training
itself is replaced by a recorder; the real runner is tested in tests/train/test_moe_train.py)."""
import importlib.util
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep_runner", os.path.join(
        ROOT, "experiments", "sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_run_every_variant_per_seed_and_aggregate(tmp_path, monkeypatch):
    sweep = _sweep()
    calls = []

    def fake_run(spec, overrides, workdir):
        calls.append((overrides, workdir))
        seed = int(next(o for o in overrides if o.startswith("train.seed=")).split("=")[1])
        shift = 1.0 if "data.sampling=packed" in overrides else 0.0
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            for step in (1, 2):
                f.write(json.dumps({"step": step, "train/loss": 5.0 + shift + seed}) + "\n")
            f.write(json.dumps({"step": 2, "eval/loss": 4.0 + shift + 0.5 * seed,
                                "eval/perplexity": 1.0}) + "\n")
    monkeypatch.setattr(sweep, "run_variant", fake_run)
    config = os.path.join(ROOT, "configs", "pretrain.py") + ":tiny"
    assert sweep.main(["--config", config, "--sweep", "sampling", "--root", str(tmp_path),
                       "--seeds", "3", "--config.train.steps=2"]) == 0
    assert [(o[-2:], os.path.relpath(w, tmp_path)) for o, w in calls] == [
        ([f"train.seed={k}", f"data.seed={k}"], os.path.join(v, f"seed{k}"))
        for v in ("iid", "packed", "stratified") for k in range(3)]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == 3
    packed = results["results"]["packed"]
    assert packed["n_seeds"] == 3 and len(packed["per_seed"]) == 3
    np.testing.assert_allclose([packed["eval_loss"], packed["eval_loss_std"]],
                               [5.5, np.std([5.0, 5.5, 6.0], ddof=1)])
    np.testing.assert_allclose(packed["train_loss"] - results["results"]["iid"]["train_loss"], 1)
    table = (tmp_path / "results.md").read_text()
    assert "mean ± std over 3 seeds" in table and "| packed | 2 | 7.0000 ± 1.0000 |" in table
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
