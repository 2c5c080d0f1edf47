"""experiments/recall.py at a 2-step scale: results.json / results.md written, cells
resumed (a finished cell is not retrained), a resumed cell with other settings or
unreadable bytes refused with a message."""
import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment():
    spec = importlib.util.spec_from_file_location("recall_experiment", os.path.join(
        ROOT, "experiments", "recall.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow   # 2 variants x 2 seeds of 2 steps, resumed: one compile per variant, ~30 s
def test_two_step_study_writes_and_resumes(tmp_path, capsys):
    exp = _experiment()
    out = tmp_path / "recall"
    args = ["--out", str(out), "--variants", "softmax", "linear_jrt", "--seeds", "2",
            "--steps", "2", "--pairs", "4", "--vocab", "32", "--d-model", "16",
            "--heads", "2", "--batch-size", "4", "--eval-rows", "8"]
    assert exp.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    soft = res["results"]["softmax"]
    assert soft["n_seeds"] == 2 and len(soft["per_seed"]) == 2
    np.testing.assert_allclose([soft["accuracy"], soft["accuracy_std"]],
                               [np.mean(soft["per_seed"]), np.std(soft["per_seed"], ddof=1)])
    assert all(0.0 <= a <= 1.0 for a in soft["per_seed"])
    assert res["setup"]["pairs"] == 4 and res["setup"]["steps"] == 2
    md = (out / "results.md").read_text()
    assert "| softmax |" in md and "± " in md
    assert res["results"]["linear_jrt"]["n_seeds"] == 2 and "| linear_jrt |" in md
    cell = out / "cells" / "softmax_seed1.json"
    stamp = cell.stat().st_mtime_ns
    (out / "cells" / "softmax_seed0.json").unlink()
    capsys.readouterr()
    assert exp.main(args) == 0
    printed = capsys.readouterr().out
    assert "softmax seed 1: done before" in printed and "softmax seed 0: accuracy" in printed
    assert cell.stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())["results"]["softmax"]
    assert again["per_seed"][1] == soft["per_seed"][1]
    assert again["per_seed"][0] == pytest.approx(soft["per_seed"][0])   # same seed, same run
    other = list(args)
    other[other.index("--steps") + 1] = "3"
    with pytest.raises(SystemExit, match="other settings"):
        exp.main(other)
    cell.write_bytes(cell.read_bytes()[:-7])          # a truncated (half-written) cell
    with pytest.raises(SystemExit, match="unreadable"):
        exp.main(args)
