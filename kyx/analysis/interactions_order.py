"""Strength of AND-OR interactions by order |S| (Ren et al. arXiv 2407.19198).

Per sample, an interaction is salient when |I(S)| > ``threshold``·max|I| (max over the
sample's AND and OR interactions together, S ≠ ∅: the empty set's I_and(∅) + I_or(∅) is
v(x_∅), an offset rather than an interaction, and is left out). For every order m the
salient AND and OR values with |S| = m are summed, positives and negatives separately
(as the reference ``utils/plot_by_order.py`` does).

Normaliser (ours; the reference code plots raw sums): each sample's sums are divided by
its Σ|I| over the salient interactions, so a sample's positive sums minus its negative
sums add up to 1 over the orders. The numbers are then fractions of a sample's salient
interaction strength, comparable across checkpoints whose log-odds grow in scale during
training; samples are averaged with equal weight. The raw (unnormalised) mean sums are
returned too.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kyx.analysis import interactions_math as im

THRESHOLD = 0.03


@dataclasses.dataclass(frozen=True)
class OrderStrength:
    """[n + 1] arrays indexed by order m (entry 0 is always 0)."""
    positive: np.ndarray      # mean over samples of the normalised positive sums
    negative: np.ndarray      # likewise, negative sums (<= 0)
    raw_positive: np.ndarray  # mean over samples, no normaliser (v's units)
    raw_negative: np.ndarray
    salient: np.ndarray       # mean count of salient interactions per order

    def to_dict(self) -> dict:
        return {k: [float(x) for x in v] for k, v in dataclasses.asdict(self).items()}


def strength_by_order(i_and, i_or, threshold: float = THRESHOLD) -> OrderStrength:
    """Order profile of interactions ``i_and``, ``i_or`` [..., 2^n] (leading axes: samples)."""
    i_and = np.asarray(i_and, np.float64)
    n = im.num_players(i_and)
    both = np.stack([i_and, np.asarray(i_or, np.float64)], axis=-2)
    both = both.reshape((-1, 2, 1 << n)).copy()
    both[..., 0] = 0.0  # the empty set is v(x_∅), not an interaction
    order = im.orders(n)
    peak = np.abs(both).max(axis=(1, 2), keepdims=True)
    salient = np.abs(both) > threshold * peak
    kept = np.where(salient, both, 0.0)
    onehot = order[:, None] == np.arange(n + 1)[None, :]          # [2^n, n+1]
    pos = np.maximum(kept, 0.0).sum(axis=1) @ onehot               # [samples, n+1]
    neg = np.minimum(kept, 0.0).sum(axis=1) @ onehot
    count = salient.sum(axis=1) @ onehot
    total = np.maximum(np.abs(kept).sum(axis=(1, 2)), 1e-30)[:, None]
    return OrderStrength((pos / total).mean(0), (neg / total).mean(0), pos.mean(0),
                         neg.mean(0), count.mean(0))
