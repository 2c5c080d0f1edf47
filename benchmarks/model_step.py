"""Forward+backward throughput of the decoder on this machine, with CPU MFU.

Prints one JSON line per model size: tokens/s, achieved FLOP/s (matmul FLOPs, causal
attention halved; kyx/model/flops.py) and the dense matmul FLOP/s measured in the same
process, whose ratio is the MFU.

    python benchmarks/model_step.py [--sizes tiny,small] [--steps 10]
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
from kyx.model.flops import train_flops_per_token  # noqa: E402
from kyx.objectives.lm import default_config as loss_defaults  # noqa: E402
from kyx.train.pretrain import make_loss_fn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(size: str, steps: int, peak: float) -> dict:
    cfg = config_lib.load(os.path.join(ROOT, "configs", "pretrain.py") + ":" + size)
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
    grad_fn = jax.jit(jax.value_and_grad(make_loss_fn(model, loss_defaults()), has_aux=True))
    out = grad_fn(params, batch)
    jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(grad_fn(params, batch))
        times.append(time.perf_counter() - start)
    step_time = float(np.median(times))
    tps = b * t / step_time
    flops = train_flops_per_token(mcfg, t) * tps
    return {"bench": "model_step", "size": size, "batch": b, "seq_len": t,
            "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "step_time_s": step_time, "tokens_per_s": tps, "achieved_flops": flops,
            "matmul_peak_flops": peak, "mfu": flops / peak, "backend": jax.default_backend(),
            "devices": jax.device_count()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    peak = metrics.matmul_peak_flops()
    for size in args.sizes.split(","):
        print(json.dumps(bench(size, args.steps, peak)), flush=True)


if __name__ == "__main__":
    main()
