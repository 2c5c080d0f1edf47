"""kyx.telemetry (and its kyx.metrics names): jsonl + TensorBoard sinks, resume truncation,
plots, FLOP/s. The console, W&B, profiler and process-0 writer: tests/train/test_telemetry.py."""
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from kyx import metrics
from kyx.errors import DataError


def test_jsonl_lines_are_valid_json(tmp_path):
    with metrics.open_writer(tmp_path, ["jsonl"]) as w:
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
    with metrics.open_writer(tmp_path, ["jsonl"]) as w:
        with pytest.raises(TypeError, match="'hist'"):
            w.write(1, {"hist": np.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            w.write(1, {"step": 1})


def test_each_line_flushed_before_close(tmp_path):
    w = metrics.open_writer(tmp_path, ["jsonl"])
    w.write(5, {"train/loss": 1.0})
    assert metrics.read_metrics(tmp_path) == [{"step": 5, "train/loss": 1.0}]
    w.close()
    w.close()  # idempotent


def test_resume_drops_later_steps(tmp_path):
    with metrics.open_writer(tmp_path, ["jsonl"]) as w:
        for step in range(1, 11):
            w.write(step, {"train/loss": 10.0 - step})
    with metrics.open_writer(tmp_path, ["jsonl"], resume_step=6) as w:
        assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
        w.write(7, {"train/loss": 0.5})
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert not list(tmp_path.glob(".metrics.jsonl.*"))


def test_truncated_last_line_tolerated(tmp_path):
    with metrics.open_writer(tmp_path, ["jsonl"]) as w:
        w.write(1, {"train/loss": 3.0})
        w.write(2, {"train/loss": 2.0})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 3, "train/lo')  # killed mid-write
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2]
    with metrics.open_writer(tmp_path, ["jsonl"]) as w:  # append cleanly after it
        w.write(3, {"train/loss": 1.0})
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3]


def test_corrupt_middle_line_is_data_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\ngarbage\n{"step": 2}\n')
    with pytest.raises(DataError, match="metrics.jsonl:2"):
        metrics.read_metrics(tmp_path)


def test_trim_rows_for_a_resumed_eval_stats_file(tmp_path):
    """A resumed run drops the evaluations after its restored step and a torn last line
    (an append after it would corrupt the file for every later reader)."""
    from kyx import telemetry

    path = tmp_path / "eval_stats.jsonl"
    rows = [{"step": s, "per_position_loss_sum": [1.5, 2.25]} for s in (10, 20, 30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 40, "per_po')
    telemetry.trim_rows(path, 20)
    telemetry.append_line(path, json.dumps({"step": 30, "per_position_loss_sum": [0.5]}))
    got = telemetry.read_jsonl(path)
    assert [r["step"] for r in got] == [10, 20, 30] and got[-1]["per_position_loss_sum"] == [0.5]
    telemetry.trim_rows(tmp_path / "absent.jsonl", 5)  # nothing to trim: no error


def test_read_missing_is_empty(tmp_path):
    assert metrics.read_metrics(tmp_path) == []


def test_tensorboard_event_file_created(tmp_path):
    with metrics.open_writer(tmp_path) as w:
        w.write(1, {"train/loss": 2.0})
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_plot_loss_curve(tmp_path):
    with metrics.open_writer(tmp_path, ["jsonl"]) as w:
        for step in range(1, 21):
            w.write(step, {"train/loss": 5.0 / step})
            if step % 10 == 0:
                w.write(step, {"eval/loss": 6.0 / step})
    out = metrics.plot_loss_curve(tmp_path)
    assert out == tmp_path / "loss_curve.png"
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    custom = metrics.plot_loss_curve(tmp_path, out=tmp_path / "plots" / "c.png")
    assert len(custom.read_bytes()) > 0


def test_plot_without_loss_is_data_error(tmp_path):
    with pytest.raises(DataError, match="nothing to plot"):
        metrics.plot_loss_curve(tmp_path)


def test_format_stats():
    assert metrics.format_stats(2.34567, 12345.0, 0.412) == "loss 2.3457 | 12.3k tok/s | MFU 41.2%"
    assert metrics.format_stats(tokens_per_s=5e6, lr=3e-4) == "lr 3.0e-04 | 5.0M tok/s"
    assert metrics.format_stats() == ""


def test_matmul_peak_flops_plausible():
    peak = metrics.matmul_peak_flops(n=256, repeats=3)
    assert 1e6 < peak < 1e16


def test_mfu():
    assert metrics.mfu(50.0, 200.0) == 0.25
    with pytest.raises(ValueError):
        metrics.mfu(1.0, 0.0)


# ----------------------------------------------------------------------------- sinks
def _tb_values(logdir):
    """(tag, step, simple value or None) of every summary value in logdir's event files."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            out += [(v.tag, event.step, v.simple_value if v.HasField("simple_value") else None)
                    for v in event.summary.value]
    return out


def test_tensorboard_config_as_hparams_and_text(tmp_path):
    from kyx.telemetry.tensorboard import flatten

    config = {"model": {"d_model": 32, "dtype": "bfloat16"}, "metrics": {"sinks": ["jsonl"]}}
    with metrics.open_writer(tmp_path, ["tensorboard"], config=config) as w:
        w.write(3, {"train/loss": 2.5})
    values = _tb_values(tmp_path / "tb")
    assert {"_hparams_/experiment", "_hparams_/session_start_info",
            "config/text_summary"} <= {tag for tag, _, _ in values}
    assert ("train/loss", 3, 2.5) in values
    assert flatten(config) == {"model.d_model": 32, "model.dtype": "bfloat16",
                               "metrics.sinks": '["jsonl"]'}


def test_remote_workdir_without_appends(tmp_path, monkeypatch):
    """A gs:// workdir (etils' epath mock: local files; here without append mode, as on
    GCS): metrics.jsonl is rewritten whole, TensorBoard is staged locally and copied, a
    resume still drops the later rows, the plot is written through epath."""
    from etils.epath import testing

    from kyx import fileio

    monkeypatch.setitem(fileio.SCHEMES, "gs", fileio.Scheme("gs", "etils"))  # no gcsfs here

    def no_append(open_fn, path, mode):
        if "a" in mode:
            raise OSError(f"objects cannot be appended to: {path}")
        return open_fn(path, mode)

    monkeypatch.chdir(tmp_path)
    with testing.mock_epath(open=no_append):
        with metrics.open_writer("gs://bucket/run", ["jsonl", "tensorboard"]) as w:
            for step in (1, 2, 3):
                w.write(step, {"train/loss": 1.0 / step})
        assert [r["step"] for r in metrics.read_metrics("gs://bucket/run")] == [1, 2, 3]
        with metrics.open_writer("gs://bucket/run", ["jsonl"], resume_step=2) as w:
            w.write(3, {"train/loss": 0.25})
        rows = metrics.read_metrics("gs://bucket/run")
        metrics.plot_loss_curve("gs://bucket/run")
    assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    local = tmp_path / "gs:" / "bucket" / "run"  # where the mock keeps gs://bucket/run
    assert [s for tag, s, _ in _tb_values(local / "tb") if tag == "train/loss"] == [1, 2, 3]
    assert (local / "loss_curve.png").stat().st_size > 1000


def test_sinks_selected_by_config():
    from kyx import telemetry

    base = {"sinks": ("jsonl", "console"), "wandb": {"project": ""}}
    assert telemetry.selected(base) == ["jsonl", "console"]
    assert telemetry.selected({**base, "wandb": {"project": "p"}}) == [
        "jsonl", "console", "wandb"]
    assert telemetry.selected({"sinks": ("wandb", "tensorboard")}) == ["tensorboard", "wandb"]


def test_only_process_zero_writes(tmp_path, monkeypatch):
    import jax

    from kyx import telemetry

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert not telemetry.writes_here()
    with telemetry.open_writer(tmp_path / "run", ["jsonl", "tensorboard", "console"]) as w:
        assert w.sinks == []
        w.write(1, {"train/loss": 1.0})
    assert not (tmp_path / "run").exists()
    assert telemetry.StepProfiler("1:2", tmp_path, enabled=telemetry.writes_here()).steps is None


# ----------------------------------------------------------------------------- console
def _console_rows(sink):
    sink.write(2, {"train/loss": 3.0, "train/lr": 1e-3, "perf/tokens_per_s": 2000.0})
    sink.write(3, {"train/loss": 2.9, "eval/loss": 2.95, "eval/perplexity": 19.1})
    sink.write(4, {"train/loss": 2.5, "train/lr": 2e-3, "perf/tokens_per_s": 2100.0,
                   "perf/mfu": 0.25})
    sink.close()


def test_console_lines_when_not_a_terminal(capsys):
    from kyx.telemetry.console import LINES, ConsoleSink, display_mode

    assert display_mode() == LINES  # pytest's captured stdout is not a tty
    _console_rows(ConsoleSink(total=4, every=2))
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and err == ""
    assert lines[0].startswith("step 2/4 | loss 3.0000 | lr 1.0e-03 | 2.0k tok/s | ETA 0:00:")
    assert lines[1] == "eval 3/4 | loss 2.95 | perplexity 19.1"  # as it happens
    assert lines[2] == "step 4/4 | loss 2.5000 | lr 2.0e-03 | 2.1k tok/s | MFU 25.0%"


def test_console_bar_on_a_terminal_and_in_notebooks(capsys, monkeypatch):
    """The tqdm bar (stderr) instead of lines; eval lines go through the bar's write; in a
    notebook without ipywidgets the text bar comes without tqdm's IProgress warning."""
    import warnings

    from kyx.telemetry import console

    for mode in (console.TERMINAL, console.NOTEBOOK):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # TqdmWarning would fail here
            _console_rows(console.ConsoleSink(total=4, every=2, mode=mode))
        out, err = capsys.readouterr()
        assert "step 2/4" not in out + err  # no plain lines next to a bar
        assert "eval 3/4 | loss 2.95" in out + err and "4/4" in err and "loss 2.5000" in err
    monkeypatch.setattr(console, "_in_notebook", lambda: True)
    assert console.display_mode() == console.NOTEBOOK


def test_wandb_without_login_is_a_clear_error(tmp_path, monkeypatch):
    from kyx import telemetry
    from kyx.errors import KyxError

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc or W&B settings of this user
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    settings = {"wandb": {"project": "p", "mode": "online"}}
    with pytest.raises(KyxError, match="wandb login.*mode=offline"):
        telemetry.open_writer(tmp_path / "run", ["wandb"], settings=settings)
