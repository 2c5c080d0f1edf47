"""Command line: `kyx train | sample | excp | convert | upcycle`.

    kyx train --config configs/pretrain.py:tiny --workdir runs/tiny [--config.a.b=v ...]
    kyx sample --workdir runs/tiny --prompt "def main(" [--max-tokens N --temperature T
               --top-k K --top-p P --seed S --chat]
    kyx excp compress|restore|stats --workdir DIR [--step N --out DIR2]
    kyx convert --from-hf HF_DIR --workdir OUT | --to-hf --workdir DIR --out HF_DIR
    kyx upcycle --workdir DENSE --out MOE --num-experts E [--noise S]
"""
from __future__ import annotations

import argparse
import sys

from kyx.errors import KyxError


def _train(argv) -> int:
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

    trainer = registry.build(cfg)
    last = loop.run(trainer, args.workdir)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())
                        if k in ("train/loss", "eval/loss", "eval/perplexity"))
    print(f"done: {args.workdir} ({summary})", flush=True)
    return 0


def _sample(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx sample")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=-1)
    parser.add_argument("--chat", action="store_true",
                        help="prompt as a user turn of the chat template; stop at end of turn "
                             "(SFT / DPO policies)")
    args = parser.parse_args(argv)
    from kyx.api import load

    model = load(args.workdir, args.step)
    text = model.generate(args.prompt, max_tokens=args.max_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          seed=args.seed, chat=args.chat)
    print(f"user: {args.prompt}\nassistant: {text}" if args.chat else args.prompt + text,
          flush=True)
    return 0


def _convert(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx convert")
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="HF_DIR", help="import a Hugging Face model")
    direction.add_argument("--to-hf", action="store_true", help="export --workdir to --out")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", help="output HF directory (with --to-hf)")
    parser.add_argument("--layout", choices=["llama", "mistral", "qwen2", "baichuan"])
    args = parser.parse_args(argv)
    from kyx.interop import convert

    if args.from_hf:
        print(f"wrote {convert.from_hf(args.from_hf, args.workdir)}")
    else:
        if not args.out:
            parser.error("--to-hf needs --out HF_DIR")
        print(f"wrote {convert.to_hf(args.workdir, args.out, args.layout)}")
    return 0


def _upcycle(argv) -> int:
    from kyx.model import upcycle
    return upcycle.main(argv)


def _excp(argv) -> int:
    from kyx.checkpoint import excp_cli
    return excp_cli.main(argv)


COMMANDS = {"train": _train, "sample": _sample, "excp": _excp, "convert": _convert,
            "upcycle": _upcycle}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}; choose one of {sorted(COMMANDS)}")
            return 2
        return 0
    try:
        return COMMANDS[argv[0]](argv[1:])
    except KyxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
