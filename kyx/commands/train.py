"""`kyx train --config FILE[:PRESET] --workdir DIR [--config.a.b=v ...]`; with
`--print-config` instead of `--workdir`: the resolved config, validated, as JSON."""
from __future__ import annotations

import json

from kyx.commands import config_and_workdir


def main(argv) -> int:
    from kyx import config as config_lib
    from kyx import distributed, fileio

    spec, overrides, args = config_and_workdir(argv, "kyx train", "configs/pretrain.py:tiny",
                                               print_config=True)
    if args.print_config:  # a dry run: no distributed set-up, no workdir, no data
        from kyx.train import registry

        cfg = config_lib.load(spec, overrides)
        registry.resolve(cfg)
        print(json.dumps(config_lib.to_dict(cfg), indent=2, sort_keys=True), flush=True)
        return 0
    workdir = args.workdir
    fileio.as_path(workdir)  # an unknown URL scheme or missing backend fails before any data
    distributed.maybe_initialize()
    cfg = config_lib.load(spec, overrides)
    from kyx.train import loop, registry

    last = loop.run(registry.build(cfg), workdir)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())
                        if k in ("train/loss", "eval/loss", "eval/perplexity"))
    if distributed.is_writer():  # one "done:" line for the run, not one per process
        print(f"done: {workdir} ({summary})", flush=True)
    return 0
