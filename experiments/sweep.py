"""Run a config's sweep (one training run per variant, sequentially) and tabulate it.

    python experiments/sweep.py --config configs/moe.py:tiny --sweep sweep \
        --root runs/moe_ablation [--steps N] [--seeds K] [--config.a.b=v ...]

The config file defines ``<sweep>() -> [{"name": str, "overrides": ["a.b=v", ...]}]``.
Every variant trains in ``ROOT/<name>`` with the base config, the command-line overrides
and its own overrides (same seed and data unless a variant changes them); a finished
workdir is reused, so an interrupted sweep can simply be re-run. Then ``ROOT`` gets
``results.md`` / ``results.json`` (final train loss, train CE over the last 10% of steps,
eval loss and perplexity, tokens/s and, for MoE runs, flagged fraction and load-balance
statistics) and ``loss_curves.png``.

``--seeds K`` (K > 1) trains every variant K times, in ``ROOT/<name>/seed<k>`` with
``train.seed=k`` and ``data.seed=k`` (init and data order both change), and reports each
number as mean ± std over the seeds (sample std, ddof=1); the plot shows the seed mean.
A difference between variants smaller than their stds is noise, not a result.
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


VARIANT_KEYS = ("name", "overrides")


def load_sweep(spec: str, name: str, keys: tuple[str, ...] = VARIANT_KEYS) -> list[dict]:
    """The variants of ``<name>()`` in the config file of ``spec``. A variant key outside
    ``keys`` is an error: a runner that would ignore it (e.g. a study's ``prepare``, which
    only experiments/reproduce.py runs) must not silently train something else."""
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
    for v in variants:
        unknown = sorted(set(v) - set(keys))
        if unknown:
            raise ConfigError(f"{path}:{name}() variant {v['name']!r} has keys {unknown} that "
                              f"this runner does not run (it knows {list(keys)}); "
                              "run it with experiments/reproduce.py if it is a study")
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
    out.update(_retrieval_stats(rows))
    return out


RETRIEVAL = ("mrr@10", "recall@1", "recall@10")  # kyx/train/colbert.py's eval


def _retrieval_stats(rows: list[dict]) -> dict:
    """The last evaluation's ranking metrics, for retrieval runs."""
    evals = [r for r in rows if "eval/mrr@10" in r]
    return {k: evals[-1][f"eval/{k}"] for k in RETRIEVAL} if evals else {}


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
           ("dropped_frac", "dropped", "{:.4f}"),
           *((k, k.replace("mrr", "MRR"), "{:.3f}") for k in RETRIEVAL),
           ("tokens_per_s", "tokens/s", "{:,.0f}")]


def seed_workdirs(root: str, name: str, seeds: int) -> list[tuple[list[str], str]]:
    """(seed overrides, workdir) of each run of one variant; one seed keeps ``ROOT/<name>``."""
    if seeds == 1:
        return [([], os.path.join(root, name))]
    return [([f"train.seed={k}", f"data.seed={k}"], os.path.join(root, name, f"seed{k}"))
            for k in range(seeds)]


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std over seeds of every number the runs share (None where any lacks it)."""
    out = {"n_seeds": len(runs)}
    for key in runs[0]:
        vals = [r.get(key) for r in runs]
        if any(not isinstance(v, (int, float)) for v in vals):
            out[key] = None if all(v is None for v in vals) else vals[0]
            continue
        out[key] = float(np.mean(vals))
        out[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def markdown_table(results: dict[str, dict]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r for r in results.values())]
    lines = ["| variant | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in results.items():
        cells = []
        for k, _, fmt in cols:
            if r.get(k) is None:
                cells.append("n/a")
            elif r.get("n_seeds", 1) > 1 and k != "steps":
                spec = fmt.replace(":d", ":.0f")
                cells.append(f"{spec.format(r[k])} ± {spec.format(r[k + '_std'])}")
            else:
                cells.append(fmt.format(int(r[k]) if k == "steps" else r[k]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _curves(workdirs: list[str]):
    """Train CE and eval loss of one variant, averaged over its seeds' workdirs."""
    train, evals = [], []
    for w in workdirs:
        rows = read_metrics(w)
        train.append([(r["step"], r.get("train/ce", r["train/loss"]))
                      for r in rows if "train/loss" in r])
        evals.append([(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r])
    n = min(map(len, train))
    steps = np.asarray([s for s, _ in train[0][:n]])
    loss = np.mean([[v for _, v in t[:n]] for t in train], axis=0)
    m = min(map(len, evals))
    ev = [(evals[0][i][0], float(np.mean([e[i][1] for e in evals]))) for i in range(m)]
    return steps, loss, ev


def plot(root: str, names: list[str], out: str, seeds: int = 1,
         offsets: dict[str, int] | None = None) -> str:
    """Train CE (moving average over ~2% of the steps) and eval loss per variant (seed means).
    ``offsets[name]``: steps the variant trained before its own run (a warm start's first
    phase); its curve is drawn from there, so equal total steps line up."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        steps, loss, ev = _curves([w for _, w in seed_workdirs(root, name, seeds)])
        offset = (offsets or {}).get(name, 0)
        steps, ev = np.asarray(steps) + offset, [(x + offset, y) for x, y in ev]
        label = f"{name} (from step {offset})" if offset else name
        w = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        color = f"C{i}"
        ax.plot(steps, loss, color=color, alpha=0.2, lw=0.8)
        ax.plot(steps[w - 1:], smooth, color=color, lw=1.5, label=f"{label} train CE")
        if ev:
            ax.plot(*zip(*ev), "o--", color=color, ms=4, lw=0.8, label=f"{label} eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)" + (f", mean of {seeds} seeds" if seeds > 1 else ""))
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
    parser.add_argument("--seeds", type=int, default=1,
                        help="runs per variant (train.seed = data.seed = 0..K-1); mean ± std")
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config PATH[:PRESET] is required (e.g. configs/moe.py:tiny)")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    variants = load_sweep(spec, args.sweep)
    if args.steps:
        overrides = overrides + [f"train.steps={args.steps}"]
    os.makedirs(args.root, exist_ok=True)
    results = {}
    for v in variants:
        runs = []
        for seed_overrides, workdir in seed_workdirs(args.root, v["name"], args.seeds):
            print(f"== {v['name']} {' '.join(seed_overrides)}: {' '.join(v['overrides'])}",
                  flush=True)
            run_variant(spec, overrides + list(v["overrides"]) + seed_overrides, workdir)
            runs.append(summarize(workdir))
        results[v["name"]] = {"overrides": list(v["overrides"]),
                              **(runs[0] if args.seeds == 1 else aggregate(runs)),
                              **({"per_seed": runs} if args.seeds > 1 else {})}
    table = markdown_table(results)
    header = (f"# Sweep `{args.sweep}` of `{spec}`\n\noverrides: `{' '.join(overrides)}`"
              + (f"; mean ± std over {args.seeds} seeds" if args.seeds > 1 else "") + "\n\n")
    with open(os.path.join(args.root, "results.md"), "w") as f:
        f.write(header + table)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump({"config": spec, "sweep": args.sweep, "overrides": overrides,
                   "seeds": args.seeds, "results": results}, f, indent=2)
    plot(args.root, list(results), os.path.join(args.root, "loss_curves.png"), args.seeds)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
