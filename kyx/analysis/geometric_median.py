"""The geometric median of a point cloud (Weiszfeld's algorithm): the sparse autoencoder's
initial b_pre (Gao et al. 2024 start it at the median of 32768 activations, a centre that
outlying activations barely move, unlike the mean)."""
from __future__ import annotations

import numpy as np


def geometric_median(x_nd: np.ndarray, *, iters: int = 200, tol: float = 1e-7,
                     eps: float = 1e-12) -> np.ndarray:
    """argmin_m Σ_n ‖x_n − m‖₂ by Weiszfeld's fixed point m ← Σ w_n x_n / Σ w_n with
    w_n = 1 / ‖x_n − m‖ (distances floored at ``eps`` so a point landing on a sample
    stays finite), started at the mean and run in float64 until the step is below
    ``tol`` times the cloud's scale. Returns [d] float32."""
    x = np.asarray(x_nd, np.float64)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"geometric_median needs a non-empty [n, d] array, got {x.shape}")
    m = x.mean(axis=0)
    scale = max(float(np.sqrt(((x - m) ** 2).sum(axis=1).mean())), eps)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(x - m, axis=1), eps)
        new = (w[:, None] * x).sum(axis=0) / w.sum()
        done = np.linalg.norm(new - m) <= tol * scale
        m = new
        if done:
            break
    return m.astype(np.float32)
