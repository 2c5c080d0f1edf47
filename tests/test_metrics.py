"""kyx.metrics: jsonl + TensorBoard logging, resume truncation, plots, progress bar, FLOP/s."""
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from kyx import metrics
from kyx.errors import DataError


def test_jsonl_lines_are_valid_json(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as w:
        w.write(1, {"train/loss": jnp.float32(2.5), "lr": np.float64(1e-3), "tokens": 128})
        w.write(2, {"train/loss": jnp.array([2.0]), "ok": np.bool_(True)})
        w.write(3, {"train/loss": float("nan"), "grad_norm": jnp.inf, "x": -np.inf})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # strict JSON: no bare NaN
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0] == {"step": 1, "train/loss": 2.5, "lr": 1e-3, "tokens": 128}
    assert type(rows[0]["tokens"]) is int and rows[1]["ok"] == 1
    assert rows[2]["train/loss"] == "nan" and rows[2]["grad_norm"] == "inf"
    back = metrics.read_metrics(tmp_path)
    assert math.isnan(back[2]["train/loss"]) and back[2]["x"] == -math.inf


def test_rejects_non_scalar_and_step_key(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as w:
        with pytest.raises(TypeError, match="'hist'"):
            w.write(1, {"hist": np.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            w.write(1, {"step": 1})


def test_each_line_flushed_before_close(tmp_path):
    w = metrics.MetricsWriter(tmp_path, use_tensorboard=False)
    w.write(5, {"train/loss": 1.0})
    assert metrics.read_metrics(tmp_path) == [{"step": 5, "train/loss": 1.0}]
    w.close()
    w.close()  # idempotent


def test_resume_drops_later_steps(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as w:
        for step in range(1, 11):
            w.write(step, {"train/loss": 10.0 - step})
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False, resume_step=6) as w:
        assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
        w.write(7, {"train/loss": 0.5})
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert not list(tmp_path.glob(".metrics.jsonl.*"))


def test_truncated_last_line_tolerated(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as w:
        w.write(1, {"train/loss": 3.0})
        w.write(2, {"train/loss": 2.0})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 3, "train/lo')  # killed mid-write
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2]
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as w:  # append cleanly after it
        w.write(3, {"train/loss": 1.0})
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]


def test_corrupt_middle_line_is_data_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\ngarbage\n{"step": 2}\n')
    with pytest.raises(DataError, match="metrics.jsonl:2"):
        metrics.read_metrics(tmp_path)


def test_read_missing_is_empty(tmp_path):
    assert metrics.read_metrics(tmp_path) == []


def test_tensorboard_event_file_created(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w:
        w.write(1, {"train/loss": 2.0})
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_plot_loss_curve(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as w:
        for step in range(1, 21):
            w.write(step, {"train/loss": 5.0 / step})
            if step % 10 == 0:
                w.write(step, {"eval/loss": 6.0 / step})
    out = metrics.plot_loss_curve(tmp_path)
    assert out == tmp_path / "loss_curve.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    custom = metrics.plot_loss_curve(tmp_path, out=tmp_path / "plots" / "c.png")
    assert custom.stat().st_size > 0


def test_plot_without_loss_is_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing to plot"):
        metrics.plot_loss_curve(tmp_path)


def test_progress_bar_does_not_crash():
    with metrics.ProgressBar(total_steps=10, initial=2, disable=False) as bar:
        for step in range(3, 11):
            bar.update(step, loss=1.0 / step, tokens_per_s=12345.0, mfu=0.412)
        bar.write("eval done")
    bar = metrics.ProgressBar(5)  # auto-disabled when not a TTY; still safe to use
    bar.update(1, loss=float("nan"))
    bar.close()


def test_format_stats():
    assert metrics.format_stats(2.34567, 12345.0, 0.412) == "loss 2.3457 | 12.3k tok/s | MFU 41.2%"
    assert metrics.format_stats(tokens_per_s=5e6) == "5.0M tok/s"
    assert metrics.format_stats() == ""


def test_matmul_peak_flops_plausible():
    peak = metrics.matmul_peak_flops(n=256, repeats=3)
    assert 1e6 < peak < 1e16


def test_mfu():
    assert metrics.mfu(50.0, 200.0) == 0.25
    with pytest.raises(ValueError):
        metrics.mfu(1.0, 0.0)
