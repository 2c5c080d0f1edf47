"""`kyx interactions`: AND-OR interaction order distribution at every checkpoint of a run.

    kyx interactions --workdir DIR --samples N [--players 8 --seed 0 --out DIR
                     --baseline eos|zeros|mean --window 32 --q-thres 0.04 --solver lp|sgd]

Every saved step (full checkpoints and ExCP reconstructions) is evaluated on the same N
validation inputs; writes OUT/interactions.json and OUT/interactions_orders.png (OUT
defaults to DIR/interactions) and prints strength share by order per step
(docs/analysis.md, "AND-OR interactions").
"""
from __future__ import annotations

import argparse
import json
import os

from kyx.analysis import interactions_dynamics as dyn
from kyx.analysis import interactions_fit, interactions_model, interactions_plot
from kyx.errors import KyxError
from kyx.fileio import atomic_write


def format_table(result: dict) -> str:
    steps, share = interactions_plot.order_matrix(result)
    n = share.shape[1] - 1
    head = f"{'step':>7} {'src':>4} " + " ".join(f"{'o' + str(m):>5}" for m in range(1, n + 1))
    lines = [head + "  match_err"]
    for i, s in enumerate(steps):
        row = result["steps"][str(s)]
        lines.append(f"{s:>7} {row['source']:>4} "
                     + " ".join(f"{x:>5.2f}" for x in share[i, 1:])
                     + f"  {row['matching_error']:.1e}")
    return "\n".join(lines)


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx interactions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--players", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--baseline", default="eos",
                        choices=list(interactions_model.BASELINES.names()))
    parser.add_argument("--q-thres", type=float, default=interactions_fit.FitOptions.q_thres)
    parser.add_argument("--solver", default="lp",
                        choices=list(interactions_fit.SOLVERS.names()))
    args = parser.parse_args(argv)
    if args.samples < 1:
        raise KyxError(f"--samples must be at least 1, got {args.samples}")
    if not os.path.isdir(args.workdir):
        raise KyxError(f"no such workdir {args.workdir!r}")
    options = dyn.Options(args.samples, args.players, args.seed, args.window, args.baseline,
                          interactions_fit.FitOptions(solver=args.solver,
                                                      q_thres=args.q_thres))
    result = dyn.dynamics(args.workdir, options)
    out = args.out or os.path.join(args.workdir, "interactions")
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "interactions.json"), json.dumps(result, indent=1))
    png = interactions_plot.plot_orders(result, os.path.join(out, "interactions_orders.png"))
    print(format_table(result))
    print(f"wrote {os.path.join(out, 'interactions.json')} and {png}")
    return 0
