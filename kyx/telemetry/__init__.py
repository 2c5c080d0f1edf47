"""Training telemetry: where a run's numbers go, and what measures it.

  sink.py         the Sink interface (write / flush / close) and what a sink is given
  sinks.py        SINKS: ``metrics.sinks`` names -> sink modules (one register line each)
  writer.py       MetricsWriter (one row -> every sink); open_writer: sinks on process 0 only
  jsonl.py        <workdir>/metrics.jsonl (+ read_metrics, resume truncation)
  tensorboard.py  TensorBoard scalars + the config as hparams and text (tensorboardX)
  console.py      progress bar on a tty / in notebooks, plain log lines otherwise
  wandb_sink.py   Weights & Biases (optional extra)
  staging.py      local directory mirrored to a remote workdir (TensorBoard, profiler)
  profiler.py     train.profile_steps: a jax.profiler trace of a range of steps
  plot.py         the loss-curve PNG
  flops.py        measured matmul peak FLOP/s and MFU
  peaks.py        datasheet bf16 peak FLOP/s of TPUs and NVIDIA GPUs by JAX device_kind
"""
from kyx.telemetry.console import ConsoleSink, format_stats
from kyx.telemetry.flops import matmul_peak_flops, mfu
from kyx.telemetry.peaks import DATASHEET_PEAKS, datasheet_peak
from kyx.telemetry.jsonl import (METRICS_FILE, append_line, read_jsonl, read_metrics,
                                 trim_rows)
from kyx.telemetry.plot import plot_loss_curve
from kyx.telemetry.profiler import StepProfiler, parse_steps
from kyx.telemetry.sink import Sink, SinkContext
from kyx.telemetry.sinks import SINKS, selected
from kyx.telemetry.writer import MetricsWriter, open_writer, writes_here

__all__ = ["ConsoleSink", "format_stats", "matmul_peak_flops", "mfu", "DATASHEET_PEAKS",
           "datasheet_peak", "METRICS_FILE",
           "append_line", "read_jsonl", "read_metrics", "trim_rows", "plot_loss_curve", "StepProfiler", "parse_steps", "Sink",
           "SinkContext", "SINKS", "selected", "MetricsWriter", "open_writer", "writes_here"]
