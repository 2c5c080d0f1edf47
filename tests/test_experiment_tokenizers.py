"""experiments/tokenizers.py end to end at a toy size: two tokenizer kinds (trained runs) at
|V| = 512 on the small_corpus fixture, 2 seeds x 2 steps each, scaffold statistics from
plain BPE; results.json / results.md / PNG."""
import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment():
    spec = importlib.util.spec_from_file_location("tokenizers_experiment", os.path.join(
        ROOT, "experiments", "tokenizers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow   # four 2-step runs: ~40 s on 2 cores
def test_tokenizer_ablation_end_to_end(fast_overrides, tmp_path):
    exp = _experiment()
    root = tmp_path / "ablation"
    args = ["--root", str(root), "--vocab", "512", "--seeds", "2", "--steps", "2",
            "--kinds", "sentencepiece", "scaffold_bpe"]
    assert exp.main(args + [f"--config.{o}" for o in fast_overrides]) == 0
    out = json.loads((root / "results.json").read_text())
    results = out["results"]
    assert sorted(results) == ["scaffold_bpe_512", "sentencepiece_512"]
    for name, r in results.items():
        per_seed = [s["eval_bits_per_byte"] for s in r["per_seed"]]
        assert r["n_seeds"] == 2 and len(per_seed) == 2 and r["vocab"] == 512
        np.testing.assert_allclose([r["eval_bits_per_byte"], r["eval_bits_per_byte_std"]],
                                   [np.mean(per_seed), np.std(per_seed, ddof=1)])
        assert per_seed[0] != per_seed[1]                     # the seeds differ
        assert 1.5 < r["bytes_per_token"] < 8                 # stdlib code at |V| = 512
        for seed in range(2):   # each run used its variant's tokenizer and model size
            cfg = json.loads((root / name / f"seed{seed}" / "config.json").read_text())
            assert cfg["data"]["tokenizer"]["kind"] == r["kind"]
            assert cfg["model"]["vocab_size"] == 512 and cfg["train"]["seed"] == seed
    hf = results["scaffold_bpe_512"]["hf_export"]   # demolished HF ids == kyx's ids
    assert hf["texts"] > 0 and hf["identical"] == hf["texts"] and hf["tokens"] > 0
    assert "hf_export" not in results["sentencepiece_512"]
    scaffold = out["scaffold"]["512"]
    assert 0 < scaffold["scaffold_in_bpe"] <= scaffold["scaffold_set"]
    assert scaffold["scaffold_share"] == pytest.approx(scaffold["scaffold_in_bpe"] / 512)
    table = (root / "results.md").read_text()
    assert "| scaffold_bpe | 512 |" in table and " ± " in table
    assert (root / "tokenizers.png").stat().st_size > 1000
    # a second call reuses every finished run and gives the same numbers
    assert exp.main(args + [f"--config.{o}" for o in fast_overrides]) == 0
    assert json.loads((root / "results.json").read_text())["results"] == results
