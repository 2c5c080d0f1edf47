"""ExCP per-tensor pieces: pruning, 1-D k-means, codebook quantisation, index packing.

Pure numpy on the host. See docs/excp.md for the formulas and the design choices
(fp16 codebook in an affine frame, v quantised in sqrt or log space).
"""
from __future__ import annotations

import dataclasses

import numpy as np

BITS = (2, 4, 8)
SPACES = ("linear", "log", "sqrt")


MAX_PRUNE_FACTOR = 2.5   # the paper's cap on r_w / median|dw|


def prune_weight_residual(dw: np.ndarray, v: np.ndarray, alpha: float = 5e-5,
                          factor: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Zero the small entries of a weight residual; returns (pruned, keep_mask, r_w).

    r_w = min(alpha / sqrt(mean(v)), 2.5) * median|dw|, with mean(v) the per-tensor mean
    of the raw second moment (factor 2.5 when mean(v) == 0). Keeps |dw| > r_w. A given
    ``factor`` replaces min(alpha / sqrt(mean(v)), 2.5) (the error-bounded mode).
    """
    if factor is None:
        mean_v = float(np.mean(v, dtype=np.float64)) if v.size else 0.0
        factor = (min(alpha / np.sqrt(mean_v), MAX_PRUNE_FACTOR) if mean_v > 0
                  else MAX_PRUNE_FACTOR)
    abs_dw = np.abs(dw)
    r_w = float(factor * np.median(abs_dw)) if dw.size else 0.0
    keep = abs_dw > r_w
    return np.where(keep, dw, np.float32(0)).astype(dw.dtype, copy=False), keep, r_w


def prune_moments(m: np.ndarray, v: np.ndarray, beta: float = 2.0,
                  weight_keep: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint moment shrinking; returns (m_pruned, v_pruned, keep_mask).

    Keeps m where |m| > beta * mean|m| (mean over the raw tensor) and applies the same
    mask to v (the mask never comes from |v|); both are also zeroed wherever the weight
    residual was pruned (`weight_keep` False).
    """
    abs_m = np.abs(m)
    keep = abs_m > (beta * float(np.mean(abs_m, dtype=np.float64)) if m.size else 0.0)
    if weight_keep is not None:
        keep &= weight_keep
    zero = np.float32(0)
    return np.where(keep, m, zero).astype(m.dtype), np.where(keep, v, zero).astype(v.dtype), keep


def kmeans_1d(x: np.ndarray, k: int, max_iter: int = 300, presorted: bool = False) -> np.ndarray:
    """Deterministic 1-D Lloyd k-means; returns sorted float64 centroids (at most k).

    On sorted data every cluster is a contiguous run, so one iteration is k binary
    searches plus prefix-sum lookups: O(k log n) after the O(n log n) sort. Quantile
    initialisation; an empty cluster re-seeds by splitting the cluster with the largest
    squared error at its median.
    """
    xs = np.asarray(x).reshape(-1)
    if not presorted:
        xs = np.sort(xs)
    n = xs.size
    if n == 0:
        return np.zeros(0)
    csum = np.empty(n + 1)
    csum[0] = 0.0
    np.cumsum(xs, dtype=np.float64, out=csum[1:])
    csq = None
    c = xs[np.minimum(((np.arange(k) + 0.5) / k * n).astype(np.int64), n - 1)].astype(np.float64)
    ends, starts = np.full(k, n), np.zeros(k, np.int64)
    prev = None
    for _ in range(max_iter):
        ends[:-1] = np.searchsorted(xs, ((c[:-1] + c[1:]) * 0.5).astype(xs.dtype), side="right")
        if prev is not None and np.array_equal(ends, prev):
            break
        prev = ends.copy()
        starts[1:] = ends[:-1]
        cnt = ends - starts
        sums = csum[ends] - csum[starts]
        if cnt.min() > 0:
            c = sums / cnt
            continue
        c = np.where(cnt > 0, sums / np.maximum(cnt, 1), c)
        if csq is None:
            csq = np.concatenate([[0.0], np.cumsum(np.square(xs, dtype=np.float64))])
        sse = csq[ends] - csq[starts] - np.square(sums) / np.maximum(cnt, 1)
        for j in np.flatnonzero(cnt == 0):
            big = int(np.argmax(np.where(cnt > 1, sse, -1.0)))
            if cnt[big] < 2 or sse[big] <= 0:
                break
            s, e = starts[big], ends[big]
            mid = (s + e) // 2
            c[big] = (csum[mid] - csum[s]) / (mid - s)
            c[j] = (csum[e] - csum[mid]) / (e - mid)
            sse[big] = cnt[big] = 0  # split each cluster at most once per iteration
        c = np.sort(c)
        prev = None
    return np.unique(c)


@dataclasses.dataclass(frozen=True)
class Quantized:
    """A quantised tensor: per-entry codes (0 = exact zero) into a small codebook.

    kind 'kmeans': float16 codebook in an affine frame, t = offset + scale * codebook,
    mapped back from `space` (linear: x = t; log: x = exp(t); sqrt: x = max(t, 0)^2).
    kind 'exact': float32 codebook holding the non-zero values themselves (used when
    there are at most 2^bits - 1 distinct non-zeros).
    """
    kind: str
    space: str
    bits: int
    codebook: np.ndarray
    offset: np.float32
    scale: np.float32
    indices: np.ndarray   # uint8, one per entry
    shape: tuple

    def table(self) -> np.ndarray:
        """float32 lookup table of length 1 + len(codebook); entry 0 is exactly 0.0."""
        if self.kind == "exact":
            vals = self.codebook.astype(np.float32)
        else:
            t = self.offset + self.scale * self.codebook.astype(np.float32)
            if self.space == "log":
                vals = np.exp(t.astype(np.float64)).astype(np.float32)
            elif self.space == "sqrt":
                vals = np.square(np.maximum(t, np.float32(0)))
            else:
                vals = t
        return np.concatenate([np.zeros(1, np.float32), vals.astype(np.float32)])


def _forward(x: np.ndarray, space: str) -> np.ndarray:
    if space == "log":
        return np.log(x)
    if space == "sqrt":
        return np.sqrt(x)
    return x


def quantize(x: np.ndarray, bits: int = 4, space: str = "linear", max_iter: int = 300
             ) -> Quantized:
    """Codes for the non-zero entries of `x` from a (2^bits - 1)-entry codebook; zeros -> 0.

    k-means runs in `space` ('log'/'sqrt' need x >= 0 and keep the decoded values
    non-negative). Centroids are rounded to float16 before the nearest-centroid
    assignment, so the codes are optimal for the codebook the decoder will see.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    x = np.asarray(x, np.float32)
    flat = x.reshape(-1)
    pos = flat != 0
    vals = flat[pos]
    if space != "linear" and vals.size and vals.min() < 0:
        raise ValueError(f"quantize(space={space!r}) needs non-negative values")
    k = 2 ** bits - 1
    indices = np.zeros(flat.size, np.uint8)
    one, zero = np.float32(1), np.float32(0)
    srt = np.sort(vals)
    if srt.size <= k or np.count_nonzero(srt[1:] != srt[:-1]) < k:
        uniq = np.unique(srt)
        indices[pos] = np.searchsorted(uniq, vals) + 1
        return Quantized("exact", "linear", bits, uniq.astype(np.float32), zero, one, indices,
                         x.shape)
    cent = kmeans_1d(_forward(srt, space), k, max_iter=max_iter, presorted=True)
    lo, hi = float(cent[0]), float(cent[-1])
    offset = np.float32((lo + hi) / 2)
    scale = np.float32((hi - lo) / 2) or one
    codebook = np.unique(((cent - offset) / scale).astype(np.float16))
    t_tab = offset + scale * codebook.astype(np.float32)
    mids = (t_tab[:-1].astype(np.float64) + t_tab[1:]) / 2
    indices[pos] = np.searchsorted(mids, _forward(vals, space)) + 1
    return Quantized("kmeans", space, bits, codebook, offset, scale, indices, x.shape)


def dequantize(q: Quantized) -> np.ndarray:
    """float32 tensor decoded from codes; code 0 decodes to exactly 0.0."""
    return q.table()[q.indices].reshape(q.shape)


def pack_indices(indices: np.ndarray, bits: int = 4) -> np.ndarray:
    """Pack 8 // bits codes per byte (low bits first); the tail is zero-padded."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    idx = np.asarray(indices, np.uint8).reshape(-1)
    if idx.size and int(idx.max()) >= 2 ** bits:
        raise ValueError(f"index {int(idx.max())} does not fit in {bits} bits")
    per = 8 // bits
    if per == 1:
        return idx.copy()
    pad = (-idx.size) % per
    groups = np.concatenate([idx, np.zeros(pad, np.uint8)]).reshape(-1, per)
    out = np.zeros(groups.shape[0], np.uint8)
    for i in range(per):
        out |= groups[:, i] << np.uint8(bits * i)
    return out


def unpack_indices(packed: np.ndarray, bits: int, numel: int) -> np.ndarray:
    """Inverse of pack_indices: the first `numel` codes as uint8."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    packed = np.asarray(packed, np.uint8).reshape(-1)
    per = 8 // bits
    if packed.size * per < numel:
        raise ValueError(f"{packed.size} packed bytes hold fewer than {numel} {bits}-bit codes")
    if per == 1:
        return packed[:numel].copy()
    out = np.empty((packed.size, per), np.uint8)
    mask = np.uint8(2 ** bits - 1)
    for i in range(per):
        out[:, i] = (packed >> np.uint8(bits * i)) & mask
    return out.reshape(-1)[:numel]
