"""Iterative alignment rounds with seeds: `kyx iterate` once per seed, then mean ± std of
every round's evaluation (reward, win rates vs round 0, KL, held-out SFT loss).

    python experiments/iterate.py --policy runs/sft --out runs/iterate --seeds 0,1,2 \\
        [--config.reward.terms='rm:1,parses:1' --config.reward.model_workdir=runs/rm
         --config.eval.win_by=rm,parses ...]

Each seed's run is `<out>/seed_<s>` (resumable: rerun the command after an interruption);
writes results.json, results.md and rounds.png (mean ± std over seeds) in ``--out``.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from kyx.alignment.iterate import Driver  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    _, overrides, rest = config_lib.parse_cli(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(rest)
    per_seed = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = config_lib.load(os.path.join(ROOT, "configs", "iterate.py") + ":tiny",
                              [f"policy={args.policy}", f"seed={seed}", *overrides])
        per_seed[seed] = Driver(cfg, os.path.join(args.out, f"seed_{seed}")).run()
        print(seed, [round(r["reward"], 3) for r in per_seed[seed]], flush=True)
    rounds = min(len(rows) for rows in per_seed.values())
    keys = [k for k, v in per_seed[next(iter(per_seed))][-1].items()
            if k != "round" and isinstance(v, float)]
    summary = [{k: [float(np.mean([per_seed[s][r][k] for s in per_seed])),
                    float(np.std([per_seed[s][r][k] for s in per_seed]))]
                for k in keys if all(k in per_seed[s][r] for s in per_seed)}
               for r in range(rounds)]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"per_seed": per_seed, "summary": summary, "overrides": overrides}, f,
                  indent=1)
    shown = [k for k in keys if k in summary[-1]]
    lines = ["| round | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for r, row in enumerate(summary):
        lines.append(f"| {r} | " + " | ".join(
            f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "" for k in shown) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    plot(summary, os.path.join(args.out, "rounds.png"), len(per_seed))
    print(md)
    return 0


def plot(summary, path, seeds):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    rounds = list(range(len(summary)))
    panels = [("reward (sample scores)", ["reward"]),
              ("win rate vs round 0", sorted(k for k in summary[-1] if k.startswith("win/"))),
              ("KL to round 0 per response", ["kl"]), ("held-out SFT loss", ["sft_eval_loss"])]
    for i, (title, keys) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        for key in keys:
            if all(key in row for row in summary):
                m = np.array([row[key][0] for row in summary])
                s = np.array([row[key][1] for row in summary])
                line, = ax.plot(rounds, m, "o-", label=key)
                ax.fill_between(rounds, m - s, m + s, alpha=0.2, color=line.get_color())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"round (mean ± std, {seeds} seeds)")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
