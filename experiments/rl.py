"""PPO and GRPO against a verifier, from an SFT policy, with seeds and spreads.

    python experiments/rl.py --sft runs/sft --out runs/rl [--algorithms ppo,grpo]
        [--seeds 0,1,2] [--steps 100] [--config.a.b=v ...]

For each algorithm and seed: ``kyx train --config configs/<algorithm>.py:tiny
--config.init_from=<sft>`` with ``train.seed`` and ``data.seed`` = the seed (a finished
run is reused). The SFT policy's level is the same held-out evaluation (eval/reward:
mean verifier score of one sampled response per held-out prompt) of the initial policy,
with each seed's evaluation sampling seed (the step-0 row, ``train.eval_at_start``). Writes results.json, results.md and
rl_curves.png (mean ± std over seeds of eval/reward and train KL vs step).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402
from kyx.train import loop, registry  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(algorithm, overrides):
    return config_lib.load(os.path.join(ROOT, "configs", f"{algorithm}.py") + ":tiny",
                           overrides)


def run(algorithm, seed, args, overrides):
    workdir = os.path.join(args.out, f"{algorithm}_s{seed}")
    base = [f"init_from={args.sft}", f"train.seed={seed}", f"data.seed={seed}",
            f"rl.eval_seed={1234 + seed}", f"train.steps={args.steps}", *overrides]
    done = [r for r in read_metrics(workdir) if r["step"] == args.steps and "eval/reward" in r]
    if not done:
        loop.run(registry.build(load(algorithm, base)), workdir)
    rows = read_metrics(workdir)
    evals = [(r["step"], r["eval/reward"]) for r in rows if "eval/reward" in r]
    before = next(r for r in rows if r["step"] == 0 and "eval/reward" in r)
    kl = [(r["step"], r["train/kl"]) for r in rows if "train/kl" in r]
    last = [r for r in rows if "eval/reward" in r][-1]
    return {"before": {k: v for k, v in before.items() if k.startswith("eval/")},
            "after": {k: v for k, v in last.items() if k.startswith("eval/")},
            "eval_curve": evals, "kl_curve": kl,
            "final_kl": float(np.mean([v for _, v in kl[-5:]]))}


def summarize(results, args):
    lines = ["| algorithm | seeds | SFT policy eval/reward | after | gain | final KL | "
             "response len | stop rate |", "|---|---|---|---|---|---|---|---|"]
    table = {}
    for algo, per_seed in results.items():
        b = np.array([r["before"]["eval/reward"] for r in per_seed.values()])
        a = np.array([r["after"]["eval/reward"] for r in per_seed.values()])
        kl = np.array([r["final_kl"] for r in per_seed.values()])
        ln = np.array([r["after"]["eval/response_len"] for r in per_seed.values()])
        st = np.array([r["after"]["eval/stopped"] for r in per_seed.values()])
        table[algo] = {"before": [b.mean(), b.std()], "after": [a.mean(), a.std()],
                       "gain": [(a - b).mean(), (a - b).std()], "kl": [kl.mean(), kl.std()]}
        lines.append(f"| {algo} | {len(b)} | {b.mean():.3f} ± {b.std():.3f} | "
                     f"{a.mean():.3f} ± {a.std():.3f} | {(a - b).mean():+.3f} ± "
                     f"{(a - b).std():.3f} | {kl.mean():.2f} ± {kl.std():.2f} | "
                     f"{ln.mean():.1f} | {st.mean():.2f} |")
    return table, "\n".join(lines) + "\n"


def plot(results, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax_r, ax_k = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for algo, per_seed in results.items():
        curves = [dict(r["eval_curve"]) for r in per_seed.values()]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        y = np.array([[c[s] for s in steps] for c in curves])
        line, = ax_r.plot(steps, y.mean(0), marker="o", label=f"{algo} (mean of {len(y)})")
        ax_r.fill_between(steps, y.mean(0) - y.std(0), y.mean(0) + y.std(0), alpha=0.2,
                          color=line.get_color())
        kls = [dict(r["kl_curve"]) for r in per_seed.values()]
        ks = sorted(set.intersection(*(set(c) for c in kls)))
        k = np.array([[c[s] for s in ks] for c in kls])
        ax_k.plot(ks, k.mean(0), label=algo, color=line.get_color())
    ax_r.set_xlabel("step")
    ax_r.set_ylabel("held-out eval/reward (parses)")
    ax_r.grid(alpha=0.3)
    ax_r.legend()
    ax_k.set_xlabel("step")
    ax_k.set_ylabel("KL(policy || ref) per response")
    ax_k.grid(alpha=0.3)
    ax_k.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--algorithms", default="ppo,grpo")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=100)
    spec, overrides, rest = config_lib.parse_cli(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(rest)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for algo in args.algorithms.split(","):
        results[algo] = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            results[algo][seed] = run(algo, seed, args, overrides)
            print(algo, seed, results[algo][seed]["before"]["eval/reward"], "->",
                  results[algo][seed]["after"]["eval/reward"], flush=True)
    table, md = summarize(results, args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"results": results, "summary": table, "steps": args.steps,
                   "overrides": overrides}, f, indent=1, default=float)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    plot(results, os.path.join(args.out, "rl_curves.png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
