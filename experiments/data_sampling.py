"""i.i.d. windows vs document-order packing on `tiny`: loss noise, final eval loss, one PNG.

Train both (same seed and steps; log every step), then compare:

    kyx train --config configs/pretrain.py:tiny --workdir runs/iid --config.train.log_every=1
    kyx train --config configs/pretrain.py:tiny --workdir runs/packed --config.train.log_every=1 \\
        --config.data.sampling=packed
    python experiments/data_sampling.py runs/packed runs/iid --out docs/images/iid_vs_packed.png

Prints one JSON line per run: the std of step-to-step train-loss differences over the last
``--last`` steps and the final eval loss.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import metrics  # noqa: E402


def summary(workdir: str, last: int) -> dict:
    rows = metrics.read_metrics(workdir)
    train = sorted((r["step"], r["train/loss"]) for r in rows if "train/loss" in r)
    loss = np.asarray([v for _, v in train])[-last:]
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    return {"workdir": workdir, "steps": train[-1][0],
            "std_step_diff_last": round(float(np.std(np.diff(loss))), 4),
            "mean_train_loss_last": round(float(loss.mean()), 4),
            "final_eval_loss": round(evals[-1][1], 4), "train": train, "eval": evals}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--labels", nargs="+")
    p.add_argument("--last", type=int, default=300)
    p.add_argument("--out", default="docs/images/iid_vs_packed.png")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for workdir, label in zip(args.workdirs, args.labels or args.workdirs):
        s = summary(workdir, args.last)
        steps, loss = zip(*s.pop("train"))
        evals = s.pop("eval")
        print(json.dumps({"label": label, **s}))
        line, = ax.plot(steps, loss, lw=0.8, alpha=0.8,
                        label=f"{label}: train (std of step diffs {s['std_step_diff_last']})")
        ax.plot(*zip(*evals), "o-", color=line.get_color(), ms=5,
                label=f"{label}: eval (final {s['final_eval_loss']})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(top=9)
    ax.legend(fontsize=8)
    ax.set_title("pretrain.py:tiny, seed 0: i.i.d. cache windows vs document-order packing")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
