"""`kyx train --config FILE[:PRESET] --workdir DIR [--config.a.b=v ...]`."""
from __future__ import annotations

import argparse


def main(argv) -> int:
    from kyx import config as config_lib
    from kyx import distributed

    spec, overrides, rest = config_lib.parse_cli(argv)
    parser = argparse.ArgumentParser(prog="kyx train")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config PATH[:PRESET] is required (e.g. configs/pretrain.py:tiny)")
    distributed.maybe_initialize()
    cfg = config_lib.load(spec, overrides)
    from kyx.train import loop, registry

    last = loop.run(registry.build(cfg), args.workdir)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())
                        if k in ("train/loss", "eval/loss", "eval/perplexity"))
    print(f"done: {args.workdir} ({summary})", flush=True)
    return 0
