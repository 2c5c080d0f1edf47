"""The colabs execute top to bottom (with fewer steps)."""
import os

import pytest


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, run_notebook):
    outputs = run_notebook("quickstart.ipynb", {"KYX_QUICKSTART_STEPS": "40",
                                                "KYX_QUICKSTART_WORKDIR": str(tmp_path / "run")})
    assert "first/last train loss" in outputs
    assert os.path.exists(tmp_path / "run" / "loss_curve.png")
