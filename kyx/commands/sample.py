"""`kyx sample --workdir DIR --prompt TEXT [--max-tokens N --temperature T --top-k K
--top-p P --seed S --step N --chat]`: sample from a workdir or a Hugging Face directory."""
from __future__ import annotations

import argparse


def main(argv) -> int:
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
