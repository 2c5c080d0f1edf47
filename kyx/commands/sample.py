"""`kyx sample`: sample from a workdir or a Hugging Face directory.

    kyx sample --workdir DIR --prompt TEXT [--max-tokens N --temperature T --top-k K
               --top-p P --seed S --step N --chat --int8 --lud [--lud-k 4 --lud-alpha 0.9]]
    kyx sample --workdir DIR --prompts FILE --out OUT.jsonl [--batch-size 16 ...]
    kyx sample --workdir DIR --prompts QA.jsonl --out OUT.jsonl --jrt [--jrt-template T]

``--prompt`` prints one completion. ``--prompts`` reads a JSONL file of ``{"prompt"}`` /
``{"messages"}`` records or a ``.txt`` file of one prompt per line
(kyx/data/prompt_file.py) and writes one JSONL row per prompt, a batch at a time;
running the same command again resumes after the rows already written
(kyx/sample_file.py). ``--int8`` decodes with row-wise int8 matmul weights
(kyx/model/quant.py); ``--lud`` decodes with Lexical Unit Decoding (kyx/model/lud.py).
``--jrt`` applies JRT prompting (kyx/data/jrt.py, docs/jrt.md) to JSONL records
``{"context", "question"}``: the context is read twice before the question
(``--jrt-template`` with ``{context}`` and ``{question}`` to change the layout).
docs/generation.md has the details and the measurements.
"""
from __future__ import annotations

import argparse
import os

from kyx.errors import ConfigError


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx sample")
    parser.add_argument("--workdir", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt; its completion is printed")
    source.add_argument("--prompts", help="JSONL of {\"prompt\"} / {\"messages\"} records, or "
                                          ".txt with one prompt per line (needs --out)")
    parser.add_argument("--out", help="JSONL of completions for --prompts (resumable)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="prompts per generation batch with --prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=-1)
    parser.add_argument("--chat", action="store_true",
                        help="prompt as a user turn of the chat template; stop at end of turn "
                             "(SFT / DPO policies)")
    parser.add_argument("--int8", action="store_true",
                        help="row-wise int8 weight-only quantised decode")
    parser.add_argument("--lud", action="store_true",
                        help="Lexical Unit Decoding (a model trained with configs/lud.py)")
    parser.add_argument("--lud-k", type=int, default=None,
                        help="positions per LUD step: 1 + placeholders (default 4)")
    parser.add_argument("--lud-alpha", type=float, default=None,
                        help="LUD acceptance confidence (default 0.9; 1 = plain decoding)")
    parser.add_argument("--jrt", action="store_true",
                        help="JRT prompting: --prompts JSONL records {\"context\", \"question\"} "
                             "become the context twice, then the question")
    parser.add_argument("--jrt-template", default=None,
                        help="format string with {context} and {question} for --jrt "
                             "(default: context, newline, context, newline, question)")
    args = parser.parse_args(argv)
    _check(args)
    # decoding options beyond sampling: passed to generate and recorded in each --out
    # row's settings
    decode_options: dict = {}
    if args.lud:
        decode_options["lud"] = {k: v for k, v in (("k", args.lud_k), ("alpha", args.lud_alpha))
                                 if v is not None}
        decode_options["lud"] = decode_options["lud"] or True
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed, **decode_options)
    if args.prompts:
        return _sample_file(args, sampling)
    from kyx.api import load

    model = load(args.workdir, args.step, quantize="int8" if args.int8 else None)
    text = model.generate(args.prompt, chat=args.chat, **sampling)
    print(f"user: {args.prompt}\nassistant: {text}" if args.chat else args.prompt + text,
          flush=True)
    return 0


def _check(args) -> None:
    if args.prompts and not args.out:
        raise ConfigError("--prompts needs --out FILE.jsonl (where the completions go)")
    if args.out and not args.prompts:
        raise ConfigError("--out goes with --prompts FILE; --prompt prints its completion")
    for name in ("batch_size", "max_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if (args.lud_k is not None or args.lud_alpha is not None) and not args.lud:
        raise ConfigError("--lud-k / --lud-alpha go with --lud")
    if args.jrt_template is not None and not args.jrt:
        raise ConfigError("--jrt-template goes with --jrt")
    if args.jrt:
        if args.prompt is not None:
            raise ConfigError("--jrt needs a context and a question to repeat the context: "
                              "give --prompts FILE.jsonl of {\"context\": ..., \"question\": ...} "
                              "records (and --out), not a plain-text --prompt")
        from kyx.data.jrt import DEFAULT_TEMPLATE, check_template
        args.jrt_template = check_template(args.jrt_template or DEFAULT_TEMPLATE)


def _sample_file(args, sampling: dict) -> int:
    from kyx.api import load
    from kyx.checkpoint.workdir import checkpoint_steps
    from kyx.data.prompt_file import read_prompt_file
    from kyx.fileio import is_local
    from kyx.sample_file import plan_resume, sample_to_jsonl

    prompts = read_prompt_file(args.prompts, chat=args.chat,
                               jrt_template=args.jrt_template if args.jrt else None)
    model = load(args.workdir, args.step, quantize="int8" if args.int8 else None)
    step = args.step if args.step >= 0 else (
        None if model.from_hf else checkpoint_steps(args.workdir)[-1])
    settings = {"model": os.path.abspath(args.workdir) if is_local(args.workdir)
                else args.workdir, "step": step, "int8": args.int8, "chat": args.chat,
                "batch_size": args.batch_size, **sampling}
    if args.jrt:   # only then: outputs written before --jrt existed still resume
        settings["jrt"] = args.jrt_template
    plan_resume(args.out, prompts, settings)  # a mismatch stops here, before compiling
    summary = sample_to_jsonl(model, prompts, args.out, settings, sampling=sampling,
                              batch_size=args.batch_size, chat=args.chat,
                              log=lambda line: print(line, flush=True))
    done, new = summary["resumed_after"], summary["written"]
    if not new:
        print(f"{args.out}: all {summary['rows']} rows were already written", flush=True)
        return 0
    rate = summary["completion_tokens"] / max(summary["seconds"], 1e-9)
    resumed = f" after {done} written before" if done else ""
    print(f"wrote {new} rows to {args.out}{resumed} ({summary['rows']} prompts) in "
          f"{summary['seconds']:.1f} s, {rate:.0f} completion tokens/s", flush=True)
    return 0
