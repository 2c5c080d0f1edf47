"""``kyx.metrics``: the names most code reads from kyx/telemetry/, under their first home.

``read_metrics(workdir)`` (rows of metrics.jsonl), ``plot_loss_curve``, ``matmul_peak_flops``
and ``mfu`` live in the ``kyx.telemetry`` package, which owns metrics.jsonl, TensorBoard,
the console, W&B and the profiler; this module only re-exports them.
"""
from kyx.telemetry import (METRICS_FILE, MetricsWriter, format_stats, matmul_peak_flops, mfu,
                           open_writer, plot_loss_curve, read_metrics)

__all__ = ["METRICS_FILE", "MetricsWriter", "format_stats", "matmul_peak_flops", "mfu",
           "open_writer", "plot_loss_curve", "read_metrics"]
