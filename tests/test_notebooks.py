"""The colabs execute top to bottom (with fewer steps)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("KYX_QUICKSTART_STEPS", "40")
    monkeypatch.setenv("KYX_QUICKSTART_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("XLA_FLAGS", "")
    path = os.path.join(ROOT, "colabs", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "colabs")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "first/last train loss" in outputs
    assert os.path.exists(tmp_path / "run" / "loss_curve.png")
