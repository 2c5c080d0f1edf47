"""colabs/dpo.ipynb runs top to bottom (SFT then DPO, a small setup and few steps)."""
import json
import os

import pytest


@pytest.mark.slow
def test_dpo_notebook_runs(post_overrides, pretrained, tmp_path, run_notebook):
    outputs = run_notebook("dpo.ipynb", {
        "KYX_DPO_STEPS": "12", "KYX_DPO_PRETRAINED": pretrained,
        "KYX_DPO_WORKDIR": str(tmp_path),
        "KYX_DPO_OVERRIDES": json.dumps(post_overrides + ["optim.lr=1e-3"])})
    assert "held-out reward margin" in outputs
    assert os.path.exists(tmp_path / "dpo" / "loss_curve.png")
