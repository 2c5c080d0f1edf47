"""Command line: `kyx train | sample | excp | convert | upcycle | rejection-sample | iterate |
data | scaling | sae | interactions | retrieve`.

    kyx train --config configs/pretrain.py:tiny --workdir runs/tiny [--config.a.b=v ...]
    kyx train --config pretrain.py:small --print-config      # resolved + validated, no run
    kyx sample --workdir runs/tiny --prompt "def main(" [--max-tokens N --temperature T
               --top-k K --top-p P --seed S --chat --int8]
    kyx sample --workdir runs/tiny --prompts FILE.jsonl --out OUT.jsonl [--batch-size 16 ...]
    kyx excp compress|restore|stats --workdir DIR [--step N --out DIR2]
    kyx convert --from-hf HF_DIR --workdir OUT | --to-hf --workdir DIR --out HF_DIR
    kyx upcycle --workdir DENSE --out MOE --num-experts E [--noise S]
    kyx rejection-sample --policy DIR --prompts FILE|mined --n 8 --out FILE [--reward T]
    kyx iterate --config configs/iterate.py:tiny --workdir DIR --config.policy=SFT_DIR
    kyx data prepare|stats --config configs/pretrain.py:tiny
    kyx scaling fit --workdir DIR [--until-step N --at-step S --source LABEL --json]
    kyx sae top-activations --workdir SAE_DIR [--latents 0,5,10-12 --top 10 --batches 20]
    kyx interactions --workdir DIR --samples N [--players 8 --seed S --out DIR]
    kyx retrieve --workdir DIR --query TEXT [--k 10 --nbits 2]   # a colbert run's top-k

    kyx COMMAND --help     that command's options (train: the shipped configs and presets)
    kyx --version          the installed kyx version
    kyx --verbose COMMAND  also show the libraries' logs (Orbax, tfds, grain via absl);
                           accepted after the command too

Compiled programs are kept in JAX's persistent cache ($KYX_COMPILATION_CACHE_DIR, else
~/.cache/kyx/jax; KYX_COMPILATION_CACHE=0 turns it off), so a repeated command skips most
of its compilation (kyx/compilation_cache.py).
"""
from __future__ import annotations

import importlib
import sys

import kyx
from kyx import logs
from kyx.compilation_cache import enable_compilation_cache
from kyx.errors import KyxError

# command -> module with main(argv) -> exit code (imported only when used)
COMMANDS = {
    "train": "kyx.commands.train",
    "sample": "kyx.commands.sample",
    "excp": "kyx.commands.excp",
    "convert": "kyx.commands.convert",
    "upcycle": "kyx.commands.upcycle",
    "rejection-sample": "kyx.commands.rejection_sample",
    "iterate": "kyx.commands.iterate",
    "data": "kyx.commands.data",
    "scaling": "kyx.commands.scaling",
    "sae": "kyx.commands.sae",
    "interactions": "kyx.commands.interactions",
    "retrieve": "kyx.commands.retrieve",
}
VERBOSE = "--verbose"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if VERBOSE in argv:  # global flag, before or after the command
        argv = [a for a in argv if a != VERBOSE]
        logs.set_verbose(True)
    if argv[:1] == ["--version"]:
        print(f"kyx {kyx.__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}; choose one of {sorted(COMMANDS)}")
            return 2
        return 0
    enable_compilation_cache()
    try:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    except KyxError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
