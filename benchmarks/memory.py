"""Memory per device of a preset's training step, from the compiled program, on a simulated mesh.

For each config, builds the real training step (kyx/train/loop.py ``jit_step``: the jitted
step `kyx train` runs, with its state and batch shardings and the donated state) on a mesh
of simulated CPU devices, lowers and compiles it on abstract sharded inputs (nothing the
size of the model is allocated, so `7b` compiles on a laptop), and prints one JSON line
per config with the compiled program's per-device bytes (``compiled.memory_analysis()``):

  argument_bytes   params + optimizer state + batch (+ step, rng) held on entry
  output_bytes     the new state + metrics
  alias_bytes      outputs written into donated arguments (the state updated in place)
  temp_bytes       temporaries: activations kept for the backward pass, gradients, logits ...
  generated_code_bytes
  total_bytes      argument + output - alias + temp + generated code: the peak the
                   program needs on one device

and, from the sharded abstract state, ``params_bytes_per_device`` and
``opt_state_bytes_per_device`` (shard shape x item size), plus the mesh, rule preset,
compile seconds and the fraction of parameter bytes left replicated. Numbers are those of
the XLA:CPU compiler (buffer assignment and fusion differ on GPU / TPU: run with
JAX_PLATFORMS=tpu on a TPU VM for that compiler's; --devices must then match the chips).

    python benchmarks/memory.py [--configs pretrain.py:1b,pretrain.py:7b,moe.py:64e]
        [--rules fsdp] [--mesh data=2,fsdp=4] [--devices 8]
        [--override model.remat=none --override data.batch_size=64 ...]
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]   # kyx, and train_step.py beside this file

DEFAULT_CONFIGS = "pretrain.py:1b,pretrain.py:7b,moe.py:64e"


def simulated_devices(argv, default: int = 8) -> None:
    """Before JAX starts: ``--devices N`` (default 8) simulated CPU devices, unless
    XLA_FLAGS already sets a count; JAX_PLATFORMS defaults to cpu."""
    count = default
    for i, arg in enumerate(argv):
        if arg == "--devices" and i + 1 < len(argv):
            count = int(argv[i + 1])
        elif arg.startswith("--devices="):
            count = int(arg.split("=", 1)[1])
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def measure(spec: str, overrides=(), mesh=None, rules=None) -> dict:
    """Compile ``spec``'s training step on abstract inputs; its JSON row."""
    import jax

    from kyx import sharding
    import train_step

    s = train_step.setup(spec, overrides, mesh, rules)
    args = train_step.abstract_args(s)
    start = time.perf_counter()
    with sharding.use_mesh(s.mesh, s.rules):
        lowered = s.fn.lower(*args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    b, t = s.batch_shape
    policy_sh, policy = s.shardings.models["policy"].params, s.abstract.models["policy"].params
    replicated, _, _ = sharding.replication_report(policy_sh, policy)
    row = {"bench": "memory", "config": spec, "overrides": list(overrides),
           "mesh": s.mesh_shape, "rules": s.cfg.mesh.rules, "devices": s.mesh.size,
           "backend": jax.default_backend(), "params": train_step.param_count(s),
           "batch": b, "seq_len": t, "dtype": s.model.dtype, "remat": s.model.remat,
           **train_step.state_dtypes(s), **train_step.state_bytes(s),
           "batch_bytes_per_device": train_step.per_device_bytes(args[1], s.batch_shardings),
           **train_step.compiled_memory(compiled),
           "replicated_param_fraction": round(replicated, 4),
           "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2)}
    row["total_gib"] = round(row["total_bytes"] / 2**30, 3)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/memory.py", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="comma-separated config specs (a file in configs/ or a path)")
    parser.add_argument("--rules", default=None,
                        help="sharding rule preset (dp, fsdp, fsdp_tp, ep); default the config's")
    parser.add_argument("--mesh", default=None,
                        help="mesh axis sizes, e.g. data=2,fsdp=4 (others 1); default the config's")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.remat=none (repeatable)")
    parser.add_argument("--devices", type=int, default=8,
                        help="simulated CPU devices (read before JAX starts)")
    args = parser.parse_args(argv)
    for spec in args.configs.split(","):
        print(json.dumps(measure(spec.strip(), args.override, args.mesh, args.rules)),
              flush=True)
    return 0


if __name__ == "__main__":
    simulated_devices(sys.argv[1:])
    from kyx.errors import KyxError  # noqa: E402  (after the device count is set)

    try:
        sys.exit(main())
    except KyxError as e:
        sys.exit(f"error: {e}")
