"""`kyx iterate --config configs/iterate.py:tiny --workdir DIR [--config.a.b=v ...]`:
rounds of sampling, scoring, preference / rejection-sampled data, training and evaluation
(kyx/alignment/iterate.py); rerun the same command to resume after an interruption."""
from __future__ import annotations

from kyx.commands import config_and_workdir


def main(argv) -> int:
    from kyx import config as config_lib
    from kyx.alignment.iterate import Driver

    spec, overrides, args = config_and_workdir(argv, "kyx iterate", "configs/iterate.py:tiny")
    workdir = args.workdir
    rows = Driver(config_lib.load(spec, overrides), workdir).run()
    last = rows[-1] if rows else {}
    summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items()
                        if isinstance(v, float) and (k == "reward" or k.startswith("win/")))
    print(f"done: {workdir}, {len(rows) - 1} rounds ({summary})", flush=True)
    return 0
