"""Training throughput and MFU of the `1b` preset (and `64e`) on whatever devices JAX sees.

One command for a GPU machine or a TPU VM (from a clone of kyx, installed with the JAX
build for the accelerator, e.g. ``pip install -e . "jax[cuda12]"`` or ``"jax[tpu]"``):

    python benchmarks/accelerator.py            # pretrain.py:1b
    python benchmarks/accelerator.py --moe      # and moe.py:64e

It builds the real training step (kyx/train/loop.py ``jit_step``: state and batch
shardings, donated state) on a mesh over all devices (the preset's mesh fitted to the
device count: benchmarks/train_step.py ``fit_mesh``), initialises the model on the mesh,
compiles the step, and runs ``--steps`` steps (after one warm-up step) on random tokens
(``--batch-per-device`` rows of the preset's sequence length per device). It prints one
JSON line per config: device kind and count, compile seconds, median step time,
tokens/s and tokens/s per device, MFU (training FLOPs per token from kyx/model/flops.py
against the device's datasheet dense bf16 peak, kyx/telemetry/peaks.py; null on a device
the table lacks) and the peak memory per device (``device.memory_stats()`` where the
backend has it, else the compiled program's ``memory_analysis()``).

On CPU (no datasheet peak) it runs a scaled-down config instead (``scaled_down: true``:
d_model 128, 2 layers, vocab 1024, sequence 128; 8 experts of width 128 for MoE) and
reports MFU against the f32 matmul peak measured in the same process
(kyx.telemetry.matmul_peak_flops), so the test suite exercises the whole path. Multi-host
TPU slices: run the same command on every worker (``--worker=all``); kyx.distributed
starts the runtime and process 0 prints.

    python benchmarks/accelerator.py [--moe] [--configs pretrain.py:1b,...] [--steps 10]
        [--batch-per-device 1] [--mesh fsdp=8] [--rules fsdp] [--override model.remat=full]
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]   # kyx, and train_step.py beside this file

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kyx import config as config_lib, distributed, sharding, telemetry  # noqa: E402
from kyx.errors import KyxError  # noqa: E402
from kyx.model.flops import train_flops_per_token  # noqa: E402
from kyx.train import state as state_lib  # noqa: E402
import step_timing  # noqa: E402
import train_step  # noqa: E402

DENSE, MOE = "pretrain.py:1b", "moe.py:64e"
# a CPU run keeps the preset's structure (dtype, remat, MoE layout) at a size that steps
# in about a second on 2 cores
CPU_SCALE = ("model.d_model=128", "model.num_layers=2", "model.num_heads=4",
             "model.num_kv_heads=2", "model.vocab_size=1024", "model.max_seq_len=128",
             "data.seq_len=128", "data.tokenizer.vocab_size=1024")
CPU_SCALE_MOE = ("model.moe_num_experts=8", "model.moe_ffn_dim=128")


def peak_of(device) -> tuple[float | None, str | None]:
    """(dense bf16 FLOP/s per device, where that number comes from), or (None, None)."""
    found = telemetry.datasheet_peak(device.device_kind)
    return (found[1], f"datasheet bf16: {found[0]}") if found else (None, None)


def scaled_overrides(spec: str, overrides) -> list[str]:
    """CPU_SCALE (+ CPU_SCALE_MOE for an MoE config) before the user's overrides."""
    cfg = config_lib.load(spec, overrides)
    return [*CPU_SCALE, *(CPU_SCALE_MOE if cfg.model.moe_num_experts else ()), *overrides]


def device_peak_memory(devices) -> int | None:
    """Largest ``peak_bytes_in_use`` over ``devices``, or None where the backend has none."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # backends without memory statistics (CPU)
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def global_batch(s: train_step.StepSetup) -> dict:
    """Random tokens (step_timing.random_batch: full-length rows, one document each) laid
    out on the mesh; every process makes its own rows."""
    b, t = s.batch_shape
    local = step_timing.random_batch(s.model.vocab_size, b // jax.process_count(), t)
    return {k: jax.make_array_from_process_local_data(s.batch_shardings[k], v)
            for k, v in local.items()}


def run(spec: str, overrides, steps: int, batch_per_device: int, mesh=None, rules=None,
        cpu_peak=None) -> dict:
    """Compile and time ``spec``'s training step on all devices; its JSON row."""
    device = jax.devices()[0]
    peak, peak_source = peak_of(device)
    scaled = jax.default_backend() == "cpu"
    overrides = scaled_overrides(spec, overrides) if scaled else list(overrides)
    n = jax.device_count()
    if mesh is None:
        base = config_lib.load(spec, overrides)
        mesh = train_step.fit_mesh({a: base.mesh[a] for a in sharding.MESH_AXES}, n)
    overrides = [*overrides, f"data.batch_size={batch_per_device * n}"]
    s = train_step.setup(spec, overrides, mesh, rules)
    state = state_lib.create(s.models, s.mesh, s.rules, s.cfg.train.seed, s.stats)
    batch = global_batch(s)
    key = jax.random.key(s.cfg.train.seed)
    start = time.perf_counter()
    with sharding.use_mesh(s.mesh, s.rules):
        compiled = s.fn.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    keys = [jax.random.fold_in(key, i) for i in range(steps + 1)]
    times, metrics = [], None
    for step_key in keys:   # the first step warms up (first execution, allocator)
        start = time.perf_counter()
        state, metrics = compiled(state, batch, step_key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    step_time = float(np.median(times[1:]))
    b, t = s.batch_shape
    tokens_per_s = b * t / step_time
    flops_per_token = train_flops_per_token(s.model, t)
    if scaled and cpu_peak:   # one process's cores: all simulated devices share them
        peak, peak_source = cpu_peak / n, "measured f32 matmul (kyx.telemetry.matmul_peak_flops)"
    mfu = tokens_per_s / n * flops_per_token / peak if peak else None
    peak_mem = device_peak_memory(jax.local_devices())
    row = {"bench": "accelerator", "config": spec, "scaled_down": scaled,
           "overrides": overrides, "device_kind": device.device_kind,
           "platform": jax.default_backend(), "device_count": n,
           "process_count": jax.process_count(), "mesh": s.mesh_shape,
           "rules": s.cfg.mesh.rules, "params": train_step.param_count(s),
           "batch": b, "seq_len": t, "batch_per_device": batch_per_device,
           "dtype": s.model.dtype, "remat": s.model.remat, "compile_s": round(compile_s, 2),
           "step_time_s": step_time, "steps": steps, "tokens_per_s": tokens_per_s,
           "tokens_per_s_per_device": tokens_per_s / n, "flops_per_token": flops_per_token,
           "peak_flops_per_device": peak, "peak_source": peak_source, "mfu": mfu,
           "peak_memory_bytes": (peak_mem if peak_mem is not None
                                 else train_step.compiled_memory(compiled)["total_bytes"]),
           "memory_source": ("device.memory_stats peak_bytes_in_use" if peak_mem is not None
                             else "compiled.memory_analysis total"),
           "loss": float(metrics["loss"])}
    if scaled:
        row["note"] = ("CPU: no datasheet peak, so a scaled-down config ran; MFU is against "
                       "this process's measured f32 matmul peak")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/accelerator.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=DENSE, help="comma-separated config specs")
    parser.add_argument("--moe", action="store_true", help=f"also run {MOE}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after a warm-up")
    parser.add_argument("--batch-per-device", type=int, default=1,
                        help="rows of the preset's sequence length per device")
    parser.add_argument("--mesh", default=None,
                        help="mesh axis sizes, e.g. fsdp=8 (default: the preset's, fitted)")
    parser.add_argument("--rules", default=None, help="sharding rule preset (default the config's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.remat=full (repeatable)")
    args = parser.parse_args(argv)
    distributed.maybe_initialize()
    specs = [s.strip() for s in args.configs.split(",")] + ([MOE] if args.moe else [])
    cpu_peak = telemetry.matmul_peak_flops() if jax.default_backend() == "cpu" else None
    for spec in specs:
        row = run(spec, args.override, args.steps, args.batch_per_device, args.mesh,
                  args.rules, cpu_peak)
        if distributed.is_writer():
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KyxError as e:
        sys.exit(f"error: {e}")
