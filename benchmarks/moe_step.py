"""Forward+backward throughput of the MoE `small` preset against the dense model with the
same active parameters (configs/pretrain.py:small), measured like model_step.py.

Prints one JSON line per model: dense, MoE with `capacity` dispatch, MoE with `dropless`
dispatch. FLOPs count active parameters only (kyx/model/flops.py), so MoE dispatch work
(one-hot einsums, capacity padding, sorting) shows up as lower MFU.

    python benchmarks/moe_step.py [--size small] [--steps 10]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from kyx import metrics  # noqa: E402
from kyx.model import Decoder, ModelConfig  # noqa: E402
from kyx.model.flops import matmul_params, train_flops_per_token  # noqa: E402
from kyx.objectives.lm import default_config as loss_defaults  # noqa: E402
from kyx.train.pretrain import make_grad_fn, make_loss_fn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(name: str, spec: str, overrides: list[str], steps: int, peak: float) -> dict:
    cfg = config_lib.load(os.path.join(ROOT, "configs", spec), overrides)
    mcfg = ModelConfig.from_config(cfg.model)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    model = Decoder(mcfg)
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"])(
        jax.random.key(0))
    params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                          is_leaf=lambda x: hasattr(x, "value"))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, mcfg.vocab_size, (b, t)).astype(np.int32)
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1),
             "segment_ids": np.ones((b, t), np.int32),
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
             "loss_mask": np.ones((b, t), np.float32)}
    loss_fn = make_loss_fn(model, loss_defaults())
    grad_fn = make_grad_fn(model, loss_fn)  # None unless the routing-error loss is on
    if grad_fn is None:
        grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        call = lambda: grad_fn(params, batch)
    else:
        grad_fn = jax.jit(grad_fn)
        call = lambda: grad_fn(params, batch, jax.random.key(1))
    jax.block_until_ready(call())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    step_time = float(np.median(times))
    tps = b * t / step_time
    flops = train_flops_per_token(mcfg, t) * tps
    return {"bench": "moe_step", "model": name, "config": spec, "overrides": overrides,
            "batch": b, "seq_len": t,
            "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "active_matmul_params": matmul_params(mcfg),
            "step_time_s": step_time, "tokens_per_s": tps, "achieved_flops": flops,
            "matmul_peak_flops": peak, "mfu": flops / peak, "backend": jax.default_backend(),
            "devices": jax.device_count()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small", help="preset of configs/moe.py")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    peak = metrics.matmul_peak_flops()
    runs = [("dense", f"pretrain.py:{args.size}", []),
            ("moe_capacity", f"moe.py:{args.size}", ["model.moe_dispatch=capacity"]),
            ("moe_dropless", f"moe.py:{args.size}", ["model.moe_dispatch=dropless"])]
    dense_tps = None
    for name, spec, overrides in runs:
        row = bench(name, spec, overrides, args.steps, peak)
        dense_tps = dense_tps or row["tokens_per_s"]
        row["tokens_per_s_vs_dense"] = row["tokens_per_s"] / dense_tps
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
