"""Choose a data mixture from the beginning of its runs (temporal scaling law, KwaiYii).

    python experiments/mixture_selection.py --root runs/mixtures \
        [--docs '<site-packages>/**/*.rst'] [--docs-weights 0.1 0.3 0.5 0.7 0.9] \
        [--fractions 0.2 0.4] [--config configs/pretrain.py:tiny] [--config.a.b=v ...]

Two sources: ``code`` (the embedded corpus, the Python standard library) and ``docs`` (any
local text files, by default the reStructuredText under this Python's site-packages).
Every mixture (docs weight w, code 1 - w) trains the target config to the end (reused if
finished), with a validation pass every ``--eval-every`` steps; one tokenizer serves all
mixtures (trained with the first mixture, then passed by path), so losses compare. Then,
from the evaluations of the first ``--fractions`` of each run only, the temporal law and
the Kaplan power law predict the final pooled validation loss (both sources' validation
sets) and each source's; mixtures are ranked by the prediction and by the measured final
loss, and the Spearman correlation of the two rankings is reported. Writes
``results.json``, ``results.md`` and ``mixtures.png`` into ``--root``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import config as config_lib  # noqa: E402
from kyx.scaling import Schedule, forecast, load_curve  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _sweep_module():
    """experiments/sweep.py (the sweep runner) as a module."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import sweep

    return sweep


def mixture_overrides(docs_glob: str, docs_weight: float, eval_every: int) -> list[str]:
    mix = {"code": {"name": "stdlib", "weight": round(1.0 - docs_weight, 6)},
           "docs": {"name": "text_files", "path": docs_glob, "weight": docs_weight}}
    return [f"data.mixture={json.dumps(mix)}", f"train.eval_every={eval_every}",
            "optim.schedule=cosine"]


def train_mixtures(args, overrides: list[str]) -> dict[float, str]:
    sweep = _sweep_module()
    runs, tokenizer = {}, os.path.join(args.root, "tokenizer.model")
    for w in args.docs_weights:
        workdir = os.path.join(args.root, f"docs{w:g}")
        extra = mixture_overrides(args.docs, w, args.eval_every)
        if os.path.exists(tokenizer):
            extra.append(f"data.tokenizer.model_path={tokenizer}")
        sweep.run_variant(args.config, overrides + extra, workdir)
        if not os.path.exists(tokenizer):
            shutil.copyfile(os.path.join(workdir, "tokenizer.model"), tokenizer)
        runs[w] = workdir
    return runs


def predictions(workdir: str, fractions, sources) -> dict:
    """{source or 'pooled': {'actual': L, fraction: {'temporal': L, 'kaplan': L}}}."""
    cfg = config_lib.load_json(os.path.join(workdir, "config.json"))
    schedule = Schedule.from_config(cfg)
    out = {}
    for source in (None, *sources):
        curve = load_curve(workdir, source=source)
        row = {"actual": float(curve.loss_e[curve.steps == schedule.n_total][0])}
        for f in fractions:
            fc = forecast(curve, schedule, int(f * schedule.n_total), baselines=("kaplan",))
            p = fc.predictions()
            row[str(f)] = {"temporal": p["temporal"], "kaplan": p["kaplan"],
                           "early": float(curve.loss_e[curve.steps <= fc.until_step][-1])}
        out[source or "pooled"] = row
    return out


def spearman(a, b) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def report(results: dict, fractions) -> tuple[str, dict]:
    weights = sorted(results)
    lines, summary = [], {}
    for target in results[weights[0]]:
        actual = [results[w][target]["actual"] for w in weights]
        lines += [f"### {target} validation loss", "",
                  "| docs weight | actual final | " + " | ".join(
                      f"{m} @{f:.0%}" for f in fractions for m in ("temporal", "kaplan", "early"))
                  + " |", "|---|---|" + "---|" * (3 * len(fractions))]
        for w in weights:
            r = results[w][target]
            cells = [f"{r[str(f)][m]:.4f}" for f in fractions
                     for m in ("temporal", "kaplan", "early")]
            lines.append(f"| {w:g} | {r['actual']:.4f} | " + " | ".join(cells) + " |")
        rho = {f"{m}@{f}": spearman([results[w][target][str(f)][m] for w in weights], actual)
               for f in fractions for m in ("temporal", "kaplan", "early")}
        best = weights[int(np.argmin(actual))]
        picks = {f"{m}@{f}": weights[int(np.argmin([results[w][target][str(f)][m]
                                                    for w in weights]))]
                 for f in fractions for m in ("temporal", "kaplan", "early")}
        summary[target] = {"spearman": rho, "best_actual": best, "picked": picks}
        lines += ["", "Spearman correlation with the actual ranking: " + ", ".join(
            f"{k} {v:+.2f}" for k, v in rho.items()),
            f"Best mixture by the actual final loss: docs {best:g}; picked: " + ", ".join(
                f"{k} {v:g}" for k, v in picks.items()), ""]
    lines.insert(0, "'early' is the last measured loss inside the fitted fraction (the naive "
                    "choice: rank by the loss so far).\n")
    return "\n".join(lines), summary


def plot(results: dict, runs: dict, fractions, out: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for k, (w, workdir) in enumerate(sorted(runs.items())):
        curve = load_curve(workdir)
        left.plot(curve.steps, curve.loss_e, "o-", ms=2, lw=0.8, color=f"C{k}",
                  label=f"docs {w:g}")
    left.set_xlabel("step")
    left.set_ylabel("pooled validation loss")
    left.set_ylim(top=float(np.median([results[w]["pooled"]["actual"] for w in runs])) + 1.5)
    left.legend(fontsize=8)
    weights = sorted(results)
    right.plot(weights, [results[w]["pooled"]["actual"] for w in weights], "ko-",
               label="actual final")
    for k, f in enumerate(fractions):
        right.plot(weights, [results[w]["pooled"][str(f)]["temporal"] for w in weights],
                   "s--", color=f"C{3 + k}", label=f"temporal law @{f:.0%}")
        right.plot(weights, [results[w]["pooled"][str(f)]["kaplan"] for w in weights],
                   "^:", color=f"C{5 + k}", label=f"kaplan @{f:.0%}")
    right.set_xlabel("docs weight")
    right.set_ylabel("final pooled validation loss")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a.split("--config.", 1)[1] for a in argv if a.startswith("--config.")]
    argv = [a for a in argv if not a.startswith("--config.")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs",
                                                         "pretrain.py") + ":tiny")
    parser.add_argument("--docs", default=os.path.join(sysconfig.get_paths()["purelib"],
                                                       "**", "*.rst"))
    parser.add_argument("--docs-weights", type=float, nargs="+",
                        default=[0.5, 0.1, 0.3, 0.7, 0.9])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--eval-every", type=int, default=20)
    args = parser.parse_args(argv)
    os.makedirs(args.root, exist_ok=True)
    runs = train_mixtures(args, overrides)
    results = {w: predictions(d, args.fractions, ("code", "docs")) for w, d in runs.items()}
    table, summary = report(results, args.fractions)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump({"docs": args.docs, "runs": {str(w): d for w, d in runs.items()},
                   "results": {str(w): r for w, r in results.items()}, "summary": summary},
                  f, indent=1)
    with open(os.path.join(args.root, "results.md"), "w") as f:
        f.write(table)
    plot(results, runs, args.fractions, os.path.join(args.root, "mixtures.png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
