"""colabs/iterative_alignment.ipynb runs top to bottom (SFT, RM, two DPO rounds, few steps)."""
import json
import os

import pytest


@pytest.mark.slow
def test_iterative_alignment_notebook_runs(post_overrides, pretrained, tmp_path, run_notebook):
    stage = []
    for s in ("dpo", "sft"):
        stage += [f"{s}.train.steps=3", f"{s}.train.eval_every=100", f"{s}.data.batch_size=8",
                  f"{s}.data.seq_len=64", f"{s}.data.eval_batches=1",
                  f"{s}.checkpoint.async_save=false", f"{s}.data.records.max_eval=16",
                  f"{s}.data.records.max_train=64"]
    outputs = run_notebook("iterative_alignment.ipynb", {
        "KYX_IT_STEPS": "3", "KYX_IT_PRETRAINED": pretrained, "KYX_IT_WORKDIR": str(tmp_path),
        # the notebook's compilation cache, in this test's directory: round 1 loads the
        # programs round 0 compiled
        "KYX_COMPILATION_CACHE": "1", "KYX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "KYX_IT_OVERRIDES": json.dumps(post_overrides + ["optim.lr=1e-3"]),
        "KYX_IT_ITERATE_OVERRIDES": json.dumps(
            [o for o in post_overrides if o.startswith("data.")] + stage + [
                "samples.prompts=8", "samples.n=2", "samples.batch_prompts=4",
                "samples.max_new_tokens=16", "samples.prompt_len=48", "eval.prompts=8"])})
    assert "win rate vs round 0 (round, rm, parses): [(0, 0.5, 0.5)" in outputs
    assert os.path.exists(tmp_path / "iterate" / "rounds.png")
