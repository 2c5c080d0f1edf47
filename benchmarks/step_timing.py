"""Shared by model_step.py and moe_step.py: time one jitted forward+backward of a config.

``time_grad_step(spec, overrides, steps, peak)`` builds the config's decoder with random
weights and a random full-length batch, compiles the pretraining loss gradient (with the
routing-error probes when that loss is on; kyx/train/step.py), and returns the median step time, tokens/s,
achieved matmul FLOP/s (kyx/model/flops.py: active parameters, causal attention halved)
and MFU against ``peak`` (the dense matmul FLOP/s measured in the same process).
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from kyx import config as config_lib
from kyx.model import Decoder, ModelConfig
from kyx.model.flops import matmul_params, train_flops_per_token
from kyx.objectives.lm import default_config as loss_defaults
from kyx.train.pretrain import make_loss_fn
from kyx.train.step import make_grad_fn

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def random_batch(vocab_size: int, b: int, t: int) -> dict:
    tokens = np.random.default_rng(0).integers(0, vocab_size, (b, t)).astype(np.int32)
    return {"tokens": tokens, "targets": np.roll(tokens, -1, 1),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
            "loss_mask": np.ones((b, t), np.float32)}


def grad_setup(spec: str, overrides: list[str]):
    """(config, model config, random params, random batch, grad_fn) of ``spec`` (a path, or
    relative to configs/): the pretraining gradient with the training RNG streams on and
    the routing-error probes when that loss is on."""
    if not os.path.exists(spec.split(":")[0]):
        spec = os.path.join(CONFIGS, spec)
    cfg = config_lib.load(spec, overrides)
    mcfg = ModelConfig.from_config(cfg.model)
    model = Decoder(mcfg)
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"])(
        jax.random.key(0))
    params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                          is_leaf=lambda x: hasattr(x, "value"))
    batch = random_batch(mcfg.vocab_size, cfg.data.batch_size, cfg.data.seq_len)
    grad_fn = make_grad_fn(model, make_loss_fn(model, loss_defaults()))
    return cfg, mcfg, params, batch, grad_fn


def time_grad_step(spec: str, overrides: list[str], steps: int, peak: float) -> dict:
    cfg, mcfg, params, batch, grad_fn = grad_setup(spec, overrides)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    fn = jax.jit(grad_fn)
    call = lambda: fn(params, batch, jax.random.key(1), {})  # noqa: E731
    jax.block_until_ready(call())  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    step_time = float(np.median(times))
    tps = b * t / step_time
    flops = train_flops_per_token(mcfg, t) * tps
    return {"config": spec, "overrides": list(overrides), "batch": b, "seq_len": t,
            "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "active_matmul_params": matmul_params(mcfg),
            "step_time_s": step_time, "tokens_per_s": tps, "achieved_flops": flops,
            "matmul_peak_flops": peak, "mfu": flops / peak, "backend": jax.default_backend(),
            "devices": jax.device_count()}
