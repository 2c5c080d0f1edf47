"""Hardware peak and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import time
from typing import Any


def matmul_peak_flops(n: int = 1024, dtype: Any = "float32", repeats: int = 5,
                      iters: int = 4) -> float:
    """Measured dense-matmul FLOP/s of this process's default JAX device.

    Times `iters` back-to-back (n x n) @ (n x n) matmuls per repeat, so dispatch overhead is
    amortised, and returns 2 n^3 / (best time per matmul). A practical stand-in for the
    datasheet peak when computing MFU on unknown hardware.
    """
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (n, n), dtype=jnp.dtype(dtype))
    b = jax.random.normal(key_b, (n, n), dtype=jnp.dtype(dtype))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = [matmul(a, b) for _ in range(iters)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - start) / iters)
    return 2.0 * n**3 / min(times)


def mfu(model_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation as a fraction (0.41 = 41%) of `peak_flops_per_s`."""
    if not peak_flops_per_s > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak_flops_per_s}")
    return float(model_flops_per_s) / float(peak_flops_per_s)
