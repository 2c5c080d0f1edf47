"""The sparsity frontier of a sweep of SAEs: L0 vs loss recovered (and delta LM loss).

    python experiments/sweep.py --config configs/sae.py:tiny --sweep sweep \\
        --root runs/sae_sweep --config.sae.model_workdir=runs/tiny
    python experiments/sae_frontier.py --root runs/sae_sweep --out docs/images/sae_frontier.png

Reads each variant's final metrics (eval/l0, eval/nmse, eval/explained_variance,
train/dead_fraction, eval/lm/*) from ``ROOT/<variant>/metrics.jsonl``; writes
``ROOT/frontier.md`` (a table) and the PNG: L0 against loss recovered (mean ablation and
zero ablation) with TopK and ReLU as separate curves.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx.metrics import read_metrics  # noqa: E402

KEYS = ("eval/l0", "eval/nmse", "eval/explained_variance", "train/dead_fraction",
        "eval/lm/loss_recovered_mean", "eval/lm/loss_recovered_zero", "eval/lm/delta_lm_loss")


def final(workdir: str) -> dict:
    """The last value of each KEYS metric in a run's metrics.jsonl."""
    out = {}
    for row in read_metrics(workdir):
        out.update({k: row[k] for k in KEYS if k in row})
    return out


def table(results: dict[str, dict]) -> str:
    head = ("| variant | L0 | NMSE | explained var. | dead frac. | loss rec. (mean abl.) | "
            "loss rec. (zero abl.) | delta LM loss |")
    lines = [head, "|---|" + "---:|" * 7]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(
            "n/a" if k not in r else f"{r[k]:.4g}" for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], out: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), dpi=120)
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate((("eval/lm/loss_recovered_mean", "mean ablation"),
                                      ("eval/lm/loss_recovered_zero", "zero ablation"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for kind, marker in (("topk", "o-"), ("relu", "s--")):
            pts = sorted((r["eval/l0"], r[key], n) for n, r in results.items()
                         if n.startswith(kind) and key in r and "eval/l0" in r)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=kind)
                for x, y, n in pts:
                    ax.annotate(n.split("_", 1)[1], (x, y), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per token, held-out)")
        ax.set_ylabel(f"loss recovered ({title})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/sae_frontier.py")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    results = {name: final(os.path.join(args.root, name))
               for name in sorted(os.listdir(args.root))
               if os.path.exists(os.path.join(args.root, name, "metrics.jsonl"))}
    md = table(results)
    with open(os.path.join(args.root, "frontier.md"), "w") as f:
        f.write(md)
    print(md)
    print(plot(results, args.out or os.path.join(args.root, "frontier.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
