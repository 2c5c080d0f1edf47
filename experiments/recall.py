"""Synthetic associative recall (MQAR) across attention kinds, with and without JRT
prompting (Arora et al. 2024, arXiv 2407.05483; docs/jrt.md).

    python experiments/recall.py --out runs/recall --variants softmax linear linear_jrt \
        --seeds 3 --steps 2000

Defaults (8 pairs, 8 queries, vocab 64, d_model 128, 2 layers, 4 heads, batch 32, rows of
48 tokens) were calibrated on 2 CPU cores so that softmax attention learns the task
(docs/jrt.md has the numbers); a cell of 2000 steps takes a few minutes.

Each (variant, seed) cell trains a tiny kyx Decoder on freshly generated rows
(kyx/data/recall.py, training seed s: rows of batch i come from seed 10**6 s + i) and
measures recall accuracy (argmax == value at every query) on ``--eval-rows`` held-out rows
(seed 10**9 + s). A variant is model-config overrides (+ JRT prompting of the rows);
``pla_prefix_len = "context"`` means M = the row's context length, so the whole context is
the non-causal prefix. Cells are written to ``<out>/cells/<variant>_seed<s>.json`` as they finish and
skipped when present (resumable; an unreadable cell is an error naming it); ``results.json`` / ``results.md`` give mean ± std
(ddof 1) over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kyx.data import recall  # noqa: E402
from kyx.fileio import atomic_write  # noqa: E402
from kyx.model.config import ModelConfig  # noqa: E402
from kyx.model.transformer import Decoder  # noqa: E402
from kyx.objectives import lm  # noqa: E402
from kyx.train import optim  # noqa: E402
from kyx.train.forward import forward_with_aux  # noqa: E402
from kyx.train.state import ModelState  # noqa: E402
from kyx.train.step import apply_update, make_grad_fn  # noqa: E402

SETTINGS = ("pairs", "queries", "vocab", "d_model", "layers", "heads", "steps", "batch_size",
            "lr", "eval_rows", "feature_dim")
CONTEXT = "context"   # pla_prefix_len placeholder: the row's context length
VARIANTS = {
    "softmax": {"model": {}, "jrt": False},
    "linear": {"model": {"attention": "linear"}, "jrt": False},
    "linear_jrt": {"model": {"attention": "linear"}, "jrt": True},
    # Based-like hybrids: the sliding window supplies the local order linear attention lacks
    "linear_swa": {"model": {"attention": "linear,swa", "attention_window": 16}, "jrt": False},
    "linear_swa_jrt": {"model": {"attention": "linear,swa", "attention_window": 16},
                       "jrt": True},
    "pla": {"model": {"attention": "pla", "pla_prefix_len": CONTEXT}, "jrt": False},
    "pla_swa": {"model": {"attention": "pla,swa", "pla_prefix_len": CONTEXT,
                          "attention_window": 16}, "jrt": False},
}


def spec_for(args, jrt: bool) -> recall.RecallSpec:
    """One row length for every variant: that of the JRT rows (context twice)."""
    length = recall.RecallSpec(args.pairs, args.queries, args.vocab, 1, jrt=True).length
    seq_len = -(-length // 16) * 16
    return recall.RecallSpec(args.pairs, args.queries, args.vocab, seq_len, jrt=jrt).validate()


def model_config(args, variant: dict, spec: recall.RecallSpec) -> ModelConfig:
    """The variant's ModelConfig."""
    overrides = {k: (spec.context_len if v == CONTEXT else v) for k, v in variant["model"].items()}
    if args.feature_dim and "attention" in overrides:   # linear kinds' Taylor-map input F
        overrides["pla_feature_dim"] = args.feature_dim
    return ModelConfig(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                       num_heads=args.heads, max_seq_len=spec.seq_len, **overrides).validate()


_PROGRAMS: dict = {}   # (variant, settings) -> Program: seeds and re-runs compile once


class Program(NamedTuple):
    spec: recall.RecallSpec
    cfg: ModelConfig
    model: Decoder
    tx: object
    step: object       # jitted (ModelState, batch, rng) -> (ModelState, loss)
    correct: object    # jitted (params, batch) -> (hits, queries)


def program(args, name: str) -> Program:
    """The variant's model, optimizer and jitted step / eval."""
    key = (name, json.dumps(settings(args), sort_keys=True))
    if key in _PROGRAMS:
        return _PROGRAMS[key]
    variant = VARIANTS[name]
    spec = spec_for(args, variant["jrt"])
    cfg = model_config(args, variant, spec)
    model = Decoder(cfg)
    ocfg = optim.default_config()
    ocfg.lr, ocfg.warmup_steps = args.lr, min(100, max(args.steps // 10, 1))
    tx, _ = optim.make_optimizer(ocfg, args.steps)

    def loss_fn(p, batch, ctx):
        logits_btv = forward_with_aux(model, p, batch, ctx.rng).out
        return lm.cross_entropy(logits_btv, batch["targets"], batch["loss_mask"])

    grad_fn = make_grad_fn(model, loss_fn)

    @jax.jit
    def step(state, batch, rng):
        (loss, _), grads = grad_fn(state.params, batch, rng, {})
        state, _ = apply_update(state, grads, loss, tx)
        return state, loss

    @jax.jit
    def correct(params, batch):
        logits_btv = forward_with_aux(model, params, batch).out
        hit_bt = (jnp.argmax(logits_btv, -1) == batch["targets"]) * batch["loss_mask"]
        return jnp.sum(hit_bt), jnp.sum(batch["loss_mask"])

    _PROGRAMS[key] = Program(spec, cfg, model, tx, step, correct)
    return _PROGRAMS[key]


def train_cell(args, name: str, seed: int) -> dict:
    prog = program(args, name)
    spec, cfg, step, correct = prog.spec, prog.cfg, prog.step, prog.correct
    variant = VARIANTS[name]
    example = recall.recall_batch(0, 1, spec)
    params = prog.model.init(jax.random.key(seed), example["tokens"], example["segment_ids"],
                             example["positions"])["params"]
    state = ModelState(params, prog.tx.init(params))
    t0 = time.perf_counter()
    rng, losses = jax.random.key(seed + 1), []
    for i in range(args.steps):
        batch = recall.recall_batch(10**6 * seed + i, args.batch_size, spec)
        state, loss = step(state, batch, jax.random.fold_in(rng, i))
        if (i + 1) % max(args.steps // 10, 1) == 0 or i + 1 == args.steps:
            losses.append([i + 1, round(float(loss), 4)])
    train_s = time.perf_counter() - t0
    held_out = recall.recall_batch(10**9 + seed, args.eval_rows, spec)
    hits = total = 0.0
    for lo in range(0, args.eval_rows, args.batch_size):
        h, n = correct(state.params, {k: v[lo:lo + args.batch_size] for k, v in held_out.items()})
        hits, total = hits + float(h), total + float(n)
    return {"variant": name, "seed": seed, "accuracy": hits / total, "settings": settings(args),
            "train_seconds": round(train_s, 1), "seq_len": spec.seq_len,
            "context_len": spec.context_len, "loss_curve": losses,
            "model": {k: v for k, v in dataclasses.asdict(cfg).items()
                      if k in ("d_model", "num_layers", "num_heads", "vocab_size",
                               *variant["model"])}}


def settings(args) -> dict:
    """What a cell depends on besides (variant, seed): a resumed cell must match it."""
    return {k: getattr(args, k) for k in SETTINGS}


def summarize(args, cells: dict[str, list[dict]]) -> tuple[dict, str]:
    results = {}
    for name, runs in cells.items():
        acc = [r["accuracy"] for r in runs]
        results[name] = {"accuracy": float(np.mean(acc)),
                         "accuracy_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                         "n_seeds": len(acc), "per_seed": acc,
                         "train_seconds": float(np.mean([r["train_seconds"] for r in runs]))}
    setup = settings(args)
    lines = ["# Associative recall (MQAR): accuracy at the query positions", "",
             f"{args.pairs} key-value pairs, {args.queries} queries, vocab {args.vocab}; "
             f"feature dim {args.feature_dim or 'default'}; "
             f"d_model {args.d_model}, {args.layers} layers, {args.heads} heads; {args.steps} "
             f"steps of {args.batch_size} rows; {args.eval_rows} held-out rows; mean ± std "
             "(ddof 1) over seeds.", "",
             "| variant | accuracy | seeds | train s / cell |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | "
                     f"{r['n_seeds']} | {r['train_seconds']:.0f} |")
    return {"setup": setup, "results": results}, "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/recall.py")
    parser.add_argument("--out", required=True, help="output directory (resumable)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--queries", type=int, default=0, help="0: as many as pairs")
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--feature-dim", type=int, default=0,
                        help="model.pla_feature_dim of the variants that set model.attention "
                             "(0: the ModelConfig default)")
    args = parser.parse_args(argv)
    args.queries = args.queries or args.pairs
    os.makedirs(os.path.join(args.out, "cells"), exist_ok=True)
    cells = {}
    for name in args.variants:
        for seed in range(args.seeds):
            path = os.path.join(args.out, "cells", f"{name}_seed{seed}.json")
            if os.path.exists(path):
                try:
                    with open(path) as f:
                        cell = json.load(f)
                except (OSError, json.JSONDecodeError) as e:
                    raise SystemExit(f"{path} is unreadable ({e}); delete it to rerun the cell")
                if cell.get("settings") != settings(args):
                    raise SystemExit(f"{path} was made with other settings ({cell.get('settings')}"
                                     f" vs {settings(args)}); give another --out or delete it")
                print(f"{name} seed {seed}: done before ({cell['accuracy']:.3f})", flush=True)
            else:
                cell = train_cell(args, name, seed)
                atomic_write(path, json.dumps(cell, indent=1))
                print(f"{name} seed {seed}: accuracy {cell['accuracy']:.3f} "
                      f"({cell['train_seconds']:.0f} s)", flush=True)
            cells.setdefault(name, []).append(cell)
    out, text = summarize(args, cells)
    atomic_write(os.path.join(args.out, "results.json"), json.dumps(out, indent=1))
    atomic_write(os.path.join(args.out, "results.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
