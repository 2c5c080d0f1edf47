"""Where does a training step's time go? A per-operation profile of one config's step.

Compiles the pretraining gradient plus the AdamW update of a config (random weights, a
random full-length batch; the same step as benchmarks/step_timing.py), records
``--steps`` executions with ``jax.profiler`` (a Perfetto trace: one event per executed HLO
thunk on CPU, per kernel on GPU/TPU) and attributes every event to the HLO instruction
it ran and that instruction's ``op_name`` in the compiled program: the Flax module path
and primitive (an einsum spec for matmuls), and whether it belongs to the forward pass
(``jvp(``), the backward pass (``transpose(``) or the update after the gradient
(optimizer).

Prints JSON lines: one ``profile_op`` per (Flax module path, operation) (``--top`` of
them, by time: ms per step, share of the step, forward / backward / optimizer split, HLO
instruction kinds), one ``profile_kind`` per coarse kind (matmuls, copies / transposes,
norms, attention element-wise work: scores scaling, mask, softmax, rope; loss and head
element-wise work, optimizer, other) and a ``profile_summary`` (step time, tokens/s,
traced share of wall time).

    python benchmarks/profile_step.py [--config configs/pretrain.py:small] [--steps 3] [--top 25]
        [--config.a.b=v ...]
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]   # kyx, and step_timing.py beside this file

import jax  # noqa: E402
import optax  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from step_timing import grad_setup  # noqa: E402

INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\{[^}]*\})?\s+([\w\-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')
WRAPPER = re.compile(r"\b(?:jvp|transpose|jit|pjit|remat|checkpoint|vmap)\(")
METHOD_FRAME = re.compile(r"^[A-Za-z_]\w*\.\w+$")

# coarse kinds, first match wins, tested on "phase module op opcode"
KINDS = (
    ("optimizer", lambda s: s.startswith("optimizer")),
    ("matmul", lambda s: re.search(r"dot_general|\bdot\b|convolution|ynn_fusion", s)),
    ("copy_transpose", lambda s: re.search(r"\b(copy|transpose)\b", s)),
    ("norm", lambda s: re.search(r"norm", s)),
    ("attention_elementwise", lambda s: re.search(r"\battn\b", s)),
    ("loss_and_head", lambda s: re.search(r"\(loss\)|\bhead\b|take_along_axis|log_softmax", s)),
)


def clean_op_name(op_name: str) -> tuple[str, str, str]:
    """jit(step)/transpose(jvp(Decoder))/while/body/closed_call/layers/mlp/btd,df->btf/dot_general
    -> ('backward', 'Decoder/layers/mlp', 'btd,df->btf/dot_general')."""
    phase = "backward" if "transpose(" in op_name else (
        "forward" if "jvp(" in op_name else "optimizer")
    path = op_name.removeprefix("jit(step)/")
    path = WRAPPER.sub("", path).replace(")", "")
    # flax method frames ("Decoder.unembed", "attn._out") belong to their module
    parts = [p for p in path.split("/") if p and p not in ("while", "body", "closed_call")
             and not METHOD_FRAME.match(p)]
    if not parts:
        return phase, "(loss)", op_name
    if "Decoder" not in parts and phase != "optimizer":
        parts.insert(0, "(loss)")  # jvp of the loss outside the model's modules
    op_parts = 2 if len(parts) > 2 and ("->" in parts[-2] or "," in parts[-2]) else 1
    return phase, "/".join(parts[:-op_parts]) or "(top)", "/".join(parts[-op_parts:])


def hlo_index(hlo_text: str) -> dict:
    """{instruction name: (opcode, op_name)} of a compiled HLO module's instructions."""
    out = {}
    for line in hlo_text.splitlines():
        m = INSTR.match(line)
        if m:
            meta = OP_NAME.search(line)
            out[m.group(1)] = (m.group(2), meta.group(1) if meta else "")
    return out


def build_step(spec: str, overrides: list[str]):
    """The compiled step (gradient + AdamW) of ``spec``, its arguments and tokens per step."""
    cfg, _, params, batch, grad_fn = grad_setup(spec, overrides)
    opt = optax.adamw(1e-3, weight_decay=0.1)

    def step(params, opt_state, batch, rng):
        (loss, _), grads = grad_fn(params, batch, rng, {})
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    args = (params, opt.init(params), batch, jax.random.key(1))
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*args).compile()
    return compiled, args, cfg.data.batch_size * cfg.data.seq_len


def trace_events(trace_dir: str) -> list[dict]:
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))[-1]
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def kind_of(key: str) -> str:
    for kind, test in KINDS:
        if test(key):
            return kind
    return "other"


def main(argv=None) -> int:
    spec, overrides, rest = config_lib.parse_cli(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="benchmarks/profile_step.py")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(rest)
    spec = spec or "pretrain.py:small"
    compiled, state, tokens = build_step(spec, overrides)
    index = hlo_index(compiled.as_text())
    params, opt_state, batch, rng = state
    params, opt_state, _ = compiled(params, opt_state, batch, rng)   # warm
    jax.block_until_ready(params)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(args.steps):
            params, opt_state, _ = compiled(params, opt_state, batch, rng)
            jax.block_until_ready(params)
        wall = (time.perf_counter() - start) / args.steps
        jax.profiler.stop_trace()
        events = trace_events(trace_dir)
    per_op = collections.defaultdict(collections.Counter)   # (module, op) -> phase -> s
    kinds, opcodes, traced = collections.Counter(), collections.defaultdict(set), 0.0
    for e in events:
        name = e.get("name", "")
        if name not in index:
            continue
        opcode, op_name = index[name]
        seconds = e.get("dur", 0.0) * 1e-6 / args.steps
        traced += seconds
        phase, module, op = clean_op_name(op_name) if op_name else ("other", "(unnamed)", name)
        per_op[(module, op)][phase] += seconds
        opcodes[(module, op)].add(name.rstrip("0123456789").rstrip("."))
        kinds[kind_of(f"{phase} {module} {op} {opcode} {name}")] += seconds
    rows = sorted(((sum(c.values()), key, c) for key, c in per_op.items()), reverse=True)
    for total, (module, op), c in rows[:args.top]:
        print(json.dumps({"bench": "profile_op", "module": module, "op": op,
                          "ms_per_step": round(1e3 * total, 2), "share": round(total / wall, 4),
                          **{f"{p}_ms": round(1e3 * c[p], 2) for p in sorted(c)},
                          "hlo": sorted(opcodes[(module, op)])[:4]}), flush=True)
    for kind, seconds in kinds.most_common():
        print(json.dumps({"bench": "profile_kind", "kind": kind,
                          "ms_per_step": round(1e3 * seconds, 2),
                          "share": round(seconds / wall, 4)}), flush=True)
    print(json.dumps({"bench": "profile_summary", "config": spec, "overrides": overrides,
                      "step_time_s": round(wall, 4), "tokens_per_s": round(tokens / wall, 1),
                      "traced_share": round(traced / wall, 4), "backend": jax.default_backend()}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
