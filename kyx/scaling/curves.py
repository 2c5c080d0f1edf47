"""Evaluation history of a workdir for the scaling fits: per-position loss sums by step.

``eval_stats.jsonl`` holds one line per evaluation (and per mixture source, tagged
``"source"``), written by the pretraining eval (kyx/train/pretrain.py): per-position loss
sums and token counts for segments that start a document and for continuation pieces of
documents cut at a row boundary. ``kind='context'`` adds both (the position is the context
the model sees; the sums then add up exactly to ``eval/loss``), ``kind='document'`` keeps
document starts only. A re-evaluated step (a resumed run) keeps its last line; a running
workdir's truncated last line is ignored.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kyx.errors import ConfigError, DataError
from kyx.fileio import as_path
from kyx.telemetry import read_jsonl

EVAL_STATS = "eval_stats.jsonl"
KINDS = {"context": (("per_position_loss_sum", "per_position_count"),
                     ("continued_loss_sum", "continued_count")),
         "document": (("per_position_loss_sum", "per_position_count"),)}


@dataclasses.dataclass(frozen=True)
class Curve:
    """Evaluations in step order: ``sum_ep`` / ``count_ep`` per position ([E, P])."""
    steps: np.ndarray
    sum_ep: np.ndarray
    count_ep: np.ndarray

    @property
    def loss_e(self) -> np.ndarray:
        """The aggregate validation loss at each evaluation (token-weighted)."""
        return self.sum_ep.sum(1) / np.maximum(self.count_ep.sum(1), 1.0)

    def until(self, step: int) -> "Curve":
        keep = self.steps <= step
        return Curve(self.steps[keep], self.sum_ep[keep], self.count_ep[keep])


def curve_from_records(records: list[dict], source: str | None = None,
                       kind: str = "context") -> Curve:
    if kind not in KINDS:
        raise ConfigError(f"unknown per-position kind {kind!r}; choose one of {sorted(KINDS)}")
    by_step = {}
    for r in records:
        if r.get("source") == source and "per_position_loss_sum" in r:
            by_step[int(r["step"])] = r
    if not by_step:
        sources = sorted({str(r.get("source")) for r in records if r.get("source")})
        what = f"source {source!r}" if source else "the pooled validation set"
        hint = f" (sources present: {', '.join(sources)})" if sources else ""
        raise DataError(f"no per-position evaluation statistics for {what}{hint}")
    steps = np.array(sorted(by_step))
    sums, counts = [], []
    for s in steps:
        r = by_step[s]
        keys = [pair for pair in KINDS[kind] if pair[0] in r]
        sums.append(np.sum([np.asarray(r[a], np.float64) for a, _ in keys], axis=0))
        counts.append(np.sum([np.asarray(r[b], np.float64) for _, b in keys], axis=0))
    widths = {len(x) for x in sums}
    if len(widths) != 1:
        raise DataError(f"per-position statistics change length over the run ({sorted(widths)}): "
                        "data.seq_len changed; fit the steps of one length (--until-step)")
    return Curve(steps, np.stack(sums), np.stack(counts))


def load_curve(workdir, source: str | None = None, kind: str = "context") -> Curve:
    """The evaluation history in ``<workdir>/eval_stats.jsonl``."""
    path = as_path(workdir) / EVAL_STATS
    if not path.exists():
        raise DataError(f"{path} does not exist: per-position statistics come from the "
                        "pretraining trainer's evaluations (train.eval_every)")
    return curve_from_records(read_jsonl(path), source, kind)
