"""colabs/rlhf.ipynb runs top to bottom (SFT then PPO against the verifier, few steps)."""
import json
import os

import pytest


@pytest.mark.slow
def test_rl_notebook_runs(post_overrides, pretrained, tmp_path, run_notebook):
    outputs = run_notebook("rlhf.ipynb", {
        "KYX_RL_STEPS": "4", "KYX_RL_SFT_STEPS": "4", "KYX_RL_PRETRAINED": pretrained,
        "KYX_RL_WORKDIR": str(tmp_path),
        "KYX_RL_OVERRIDES": json.dumps(post_overrides + ["optim.lr=1e-3", "data.batch_size=8"]),
        "KYX_RL_PPO_OVERRIDES": json.dumps(["data.seq_len=48", "rl.max_new_tokens=16"])})
    assert "held-out reward (step, reward): (0," in outputs
    assert os.path.exists(tmp_path / "ppo" / "loss_curve.png")
