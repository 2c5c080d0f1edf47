"""`kyx train --config FILE[:PRESET] --workdir DIR [--config.a.b=v ...]`."""
from __future__ import annotations

from kyx.commands import config_and_workdir


def main(argv) -> int:
    from kyx import config as config_lib
    from kyx import distributed

    spec, overrides, workdir = config_and_workdir(argv, "kyx train",
                                                  "configs/pretrain.py:tiny")
    distributed.maybe_initialize()
    cfg = config_lib.load(spec, overrides)
    from kyx.train import loop, registry

    last = loop.run(registry.build(cfg), workdir)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())
                        if k in ("train/loss", "eval/loss", "eval/perplexity"))
    print(f"done: {workdir} ({summary})", flush=True)
    return 0
