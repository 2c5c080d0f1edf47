"""`kyx iterate --config configs/iterate.py:tiny --workdir DIR [--config.a.b=v ...]`:
rounds of sampling, scoring, preference / rejection-sampled data, training and evaluation
(kyx/alignment/iterate.py); rerun the same command to resume after an interruption."""
from __future__ import annotations

import argparse


def main(argv) -> int:
    from kyx import config as config_lib
    from kyx.alignment.iterate import Driver

    spec, overrides, rest = config_lib.parse_cli(argv)
    parser = argparse.ArgumentParser(prog="kyx iterate")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config PATH[:PRESET] is required (e.g. configs/iterate.py:tiny)")
    rows = Driver(config_lib.load(spec, overrides), args.workdir).run()
    last = rows[-1] if rows else {}
    summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items()
                        if isinstance(v, float) and (k == "reward" or k.startswith("win/")))
    print(f"done: {args.workdir}, {len(rows) - 1} rounds ({summary})", flush=True)
    return 0
