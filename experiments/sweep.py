"""Run a config's sweep (one training run per variant, sequentially) and tabulate it.

    python experiments/sweep.py --config configs/moe.py:tiny --sweep sweep \
        --root runs/moe_ablation [--steps N] [--config.a.b=v ...]

The config file defines ``<sweep>() -> [{"name": str, "overrides": ["a.b=v", ...]}]``.
Every variant trains in ``ROOT/<name>`` with the base config, the command-line overrides
and its own overrides (same seed and data unless a variant changes them); a finished
workdir is reused, so an interrupted sweep can simply be re-run. Then ``ROOT`` gets
``results.md`` / ``results.json`` (final train loss, train CE over the last 10% of steps,
eval loss and perplexity, tokens/s and, for MoE runs, flagged fraction and load-balance
statistics) and ``loss_curves.png``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from kyx.errors import ConfigError  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402


def load_sweep(spec: str, name: str) -> list[dict]:
    path, _ = config_lib.split_spec(spec)
    module_spec = importlib.util.spec_from_file_location(f"_kyx_sweep_{path.stem}", path)
    if module_spec is None or not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"config file {path} has no {name}() function defining a sweep")
    variants = fn()
    names = [v["name"] for v in variants]
    if not variants or len(set(names)) != len(names):
        raise ConfigError(f"{path}:{name}() must return variants with unique names, got {names}")
    return variants


def run_variant(spec: str, overrides: list[str], workdir: str) -> None:
    from kyx.train import loop, registry

    cfg = config_lib.load(spec, overrides)
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    if rows and rows[-1]["step"] >= cfg.train.steps:
        print(f"{workdir}: already finished ({cfg.train.steps} steps), reusing", flush=True)
        return
    loop.run(registry.build(cfg), workdir)


def summarize(workdir: str) -> dict:
    """Numbers of one finished run, read back from its metrics.jsonl and config.json."""
    rows = read_metrics(workdir)
    train = [r for r in rows if "train/loss" in r]
    if not train:
        raise ConfigError(f"{workdir} has no train/loss rows in metrics.jsonl")
    tail = train[-max(1, len(train) // 10):]
    evals = [r for r in rows if "eval/loss" in r]
    tps = [r["perf/tokens_per_s"] for r in train if "perf/tokens_per_s" in r]
    out = {
        "steps": train[-1]["step"],
        "train_loss": train[-1]["train/loss"],
        "train_ce_last10pct": float(np.mean([r.get("train/ce", r["train/loss"]) for r in tail])),
        "eval_loss": evals[-1]["eval/loss"] if evals else None,
        "eval_perplexity": evals[-1]["eval/perplexity"] if evals else None,
        # the first logged interval includes compilation
        "tokens_per_s": float(np.median(tps[1:] if len(tps) > 1 else tps)) if tps else None,
    }
    out.update(_moe_stats(workdir, train, tail))
    return out


def _moe_stats(workdir: str, train: list[dict], tail: list[dict]) -> dict:
    keys = sorted({k for r in train for k in r if k.startswith("train/moe/layer")})
    if not keys:
        return {}
    experts = config_lib.load_json(os.path.join(workdir, "config.json")).model.moe_num_experts

    def mean(rows, suffix, scale=1.0):
        vals = [r[k] * scale for r in rows for k in keys if k.endswith("/" + suffix) and k in r]
        return float(np.mean(vals)) if vals else None
    return {
        "flagged_frac_mean": mean(train, "flagged_frac"),
        # balance over the last 10% of steps, averaged over MoE layers; 1.0 = uniform
        "load_max_x_e": mean(tail, "load_max", experts),
        "load_min_x_e": mean(tail, "load_min", experts),
        "lb_loss": mean(tail, "lb_loss"),
        "router_entropy": mean(tail, "router_entropy"),
        "dropped_frac": mean(tail, "dropped_frac"),
    }


COLUMNS = [("steps", "steps", "{:d}"), ("train_loss", "train loss", "{:.4f}"),
           ("train_ce_last10pct", "train CE (last 10%)", "{:.4f}"),
           ("eval_loss", "eval loss", "{:.4f}"), ("eval_perplexity", "eval ppl", "{:.2f}"),
           ("flagged_frac_mean", "flagged frac", "{:.4f}"),
           ("load_max_x_e", "max load x E", "{:.3f}"), ("load_min_x_e", "min load x E", "{:.3f}"),
           ("lb_loss", "LB loss", "{:.4f}"), ("router_entropy", "router entropy", "{:.3f}"),
           ("dropped_frac", "dropped", "{:.4f}"), ("tokens_per_s", "tokens/s", "{:,.0f}")]


def markdown_table(results: dict[str, dict]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r for r in results.values())]
    lines = ["| variant | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        cells = ["n/a" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(root: str, names: list[str], out: str) -> str:
    """Train CE (moving average over ~2% of the steps) and eval loss per variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        rows = read_metrics(os.path.join(root, name))
        train = [(r["step"], r.get("train/ce", r["train/loss"])) for r in rows if "train/loss" in r]
        steps, loss = map(np.asarray, zip(*train))
        w = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        color = f"C{i}"
        ax.plot(steps, loss, color=color, alpha=0.2, lw=0.8)
        ax.plot(steps[w - 1:], smooth, color=color, lw=1.5, label=f"{name} train CE")
        ev = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
        if ev:
            ax.plot(*zip(*ev), "o--", color=color, ms=4, lw=0.8, label=f"{name} eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    return out


def main(argv=None) -> int:
    spec, overrides, rest = config_lib.parse_cli(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="experiments/sweep.py")
    parser.add_argument("--sweep", default="sweep", help="function in the config file")
    parser.add_argument("--root", required=True, help="directory for the variants' workdirs")
    parser.add_argument("--steps", type=int, default=0, help="override train.steps")
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config PATH[:PRESET] is required (e.g. configs/moe.py:tiny)")
    variants = load_sweep(spec, args.sweep)
    if args.steps:
        overrides = overrides + [f"train.steps={args.steps}"]
    os.makedirs(args.root, exist_ok=True)
    results = {}
    for v in variants:
        workdir = os.path.join(args.root, v["name"])
        print(f"== {v['name']}: {' '.join(v['overrides'])}", flush=True)
        run_variant(spec, overrides + list(v["overrides"]), workdir)
        results[v["name"]] = {"overrides": list(v["overrides"]), **summarize(workdir)}
    table = markdown_table(results)
    header = (f"# Sweep `{args.sweep}` of `{spec}`\n\noverrides: `{' '.join(overrides)}`\n\n")
    with open(os.path.join(args.root, "results.md"), "w") as f:
        f.write(header + table)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump({"config": spec, "sweep": args.sweep, "overrides": overrides,
                   "results": results}, f, indent=2)
    plot(args.root, list(results), os.path.join(args.root, "loss_curves.png"))
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
