"""Tokenizer ablation at equal |V|: SentencePiece vs byte-level BPE vs Scaffold-BPE (issue 19).

    python experiments/tokenizers.py --root runs/tokenizers [--vocab 4096 8192] [--seeds 3]
        [--kinds sentencepiece bpe scaffold_bpe] [--steps N]
        [--config configs/pretrain.py:tiny] [--config.a.b=v ...]

For every ``data.tokenizer.kind`` and vocabulary size |V| (the ids a model embeds: 9
special + 256 byte ids + learned tokens, ``data.tokenizer.vocab_size`` =
``model.vocab_size``), on the config's corpus (by default the embedded one, the Python
standard library):

* **bytes per token**: UTF-8 bytes of the validation split's texts / the tokens ``encode``
  gives them (no BOS / EOS), higher = better compression;
* **scaffold tokens under plain BPE** (one number per |V|): S = the final scaffold set of
  Scaffold-BPE trained on the same text at the same |V| (tokens of its expanded vocabulary
  E that are not in its V when training stops); the count is how many of plain BPE's
  learned tokens have the bytes of a token of S, and the share is that count / |V|, i.e.
  the vocabulary slots plain BPE spends on tokens Scaffold-BPE deems too rare on their own
  (Scaffold-BPE's merges are plain BPE's merges continued further, so these are the slots
  it frees and refills);
* **eval bits per byte** of the config's pretraining (``tiny`` by default) with that
  tokenizer, over ``--seeds`` seeds (``train.seed = data.seed = k``, runs by
  experiments/sweep.py's ``run_variant``; a finished workdir is reused), as mean ± sample
  std (ddof 1): ``eval/bits_per_byte`` of the last evaluation (CE in nats summed over the
  validation targets / (ln 2 x their UTF-8 bytes), kyx/data/token_bytes.py), the loss that
  compares across tokenizers; the per-token eval loss is reported too, but does not.

Every run evaluates the whole validation split (``data.eval_batches=0`` unless overridden):
a fixed number of batches holds different text under different tokenizers, so bits per
byte would be measured on different documents.

Tokenizers are trained (once, cached by fingerprint in ``data_dir/tokenizers``) before
any run; the runs then load the same files. Writes ``results.json``, ``results.md`` and
``tokenizers.png`` into ``--root``; the runs' workdirs are ``ROOT/<kind>_<V>[/seed<k>]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# run as a script, this file's directory leads sys.path, and `import tokenizers` (the
# Hugging Face library, used by the export check and by transformers) would find this file
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from kyx import config as config_lib  # noqa: E402
from kyx.data import pipeline  # noqa: E402
from kyx.data.bpe import BpeTokenizer  # noqa: E402
from kyx.errors import ConfigError  # noqa: E402
from kyx.interop import hf_bpe_export  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402

KINDS = ("sentencepiece", "bpe", "scaffold_bpe")
DEFAULT_CONFIG = os.path.join(os.path.dirname(HERE), "configs", "pretrain.py") + ":tiny"


def _sweep_module():
    """experiments/sweep.py (the sweep runner) as a module (loaded by path: this directory
    stays off sys.path, see above)."""
    if "sweep" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sweep", os.path.join(HERE, "sweep.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["sweep"] = module
        spec.loader.exec_module(module)
    return sys.modules["sweep"]


def variant_overrides(kind: str, vocab: int) -> list[str]:
    return [f"data.tokenizer.kind={kind}", f"data.tokenizer.vocab_size={vocab}",
            f"model.vocab_size={vocab}"]


def prepare(spec: str, overrides: list[str], kind: str, vocab: int):
    """(corpus, tokenizer, data config) of one variant: the tokenizer its runs will load."""
    cfg = config_lib.load(spec, overrides + variant_overrides(kind, vocab))
    if cfg.data.tokenizer.model_path:
        raise ConfigError("the tokenizer ablation trains each kind itself; drop "
                          f"data.tokenizer.model_path={cfg.data.tokenizer.model_path!r}")
    corpus, tok = pipeline.prepare(cfg.data)
    return corpus, tok, cfg.data


def bytes_per_token(tokenizer, texts: list[str]) -> float:
    """UTF-8 bytes of ``texts`` / the tokens ``encode`` gives them."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return n_bytes / max(n_tokens, 1)


def scaffold_in_bpe(bpe: BpeTokenizer, scaffold: BpeTokenizer) -> dict:
    """How many of plain BPE's learned tokens are in Scaffold-BPE's final scaffold set S
    (compared by their bytes); share = count / |V| of plain BPE."""
    pieces, _ = scaffold.model.expand()
    s_bytes = {pieces[e] for e in scaffold.model.scaffold}
    learned = [b for b in bpe.id_bytes if len(b) > 1]   # specials are b"", bytes 1 long
    count = sum(b in s_bytes for b in learned)
    return {"scaffold_set": len(s_bytes), "bpe_learned": len(learned),
            "scaffold_in_bpe": count, "scaffold_share": count / bpe.vocab_size,
            "examples": [b.decode("utf-8", "backslashreplace")
                         for b in learned if b in s_bytes][:12]}


def last_eval(workdir: str) -> dict:
    rows = [r for r in read_metrics(workdir) if "eval/bits_per_byte" in r]
    if not rows:
        raise ConfigError(f"{workdir} has no eval/bits_per_byte rows in metrics.jsonl; "
                          "remove the workdir (trained before kyx reported bits per byte)")
    return {"eval_bits_per_byte": rows[-1]["eval/bits_per_byte"],
            "eval_loss": rows[-1]["eval/loss"]}


def tokenizer_stats(spec, overrides, kinds, vocabs) -> tuple[dict, dict, dict]:
    """Trains (or loads) every tokenizer: ({variant: bytes_per_token}, {vocab: scaffold},
    {variant: HF export check on the validation split} for the BPE kinds)."""
    compression, scaffold, hf_check = {}, {}, {}
    for vocab in vocabs:
        toks, texts = {}, None
        for kind in dict.fromkeys([*kinds, "bpe", "scaffold_bpe"]):
            corpus, toks[kind], data = prepare(spec, overrides, kind, vocab)
            if texts is None:
                texts = list(pipeline.corpus_texts(corpus, data.eval_split))
            if kind in kinds:
                compression[f"{kind}_{vocab}"] = bytes_per_token(toks[kind], texts)
                print(f"{kind} |V|={vocab}: {compression[f'{kind}_{vocab}']:.3f} bytes/token",
                      flush=True)
            if kind in kinds and kind != "sentencepiece":
                check = hf_check[f"{kind}_{vocab}"] = hf_bpe_export.check_export(toks[kind], texts)
                print(f"{kind} |V|={vocab}: HF export encodes {check['identical']}/"
                      f"{check['texts']} validation texts identically", flush=True)
        scaffold[vocab] = scaffold_in_bpe(toks["bpe"], toks["scaffold_bpe"])
    return compression, scaffold, hf_check


def train_runs(spec, overrides, kinds, vocabs, seeds, root) -> dict:
    """Every variant x seed trained (or reused): {variant: mean ± std numbers}."""
    sweep = _sweep_module()
    results = {}
    for vocab in vocabs:
        for kind in kinds:
            name, runs = f"{kind}_{vocab}", []
            for seed_overrides, workdir in sweep.seed_workdirs(root, name, seeds):
                extra = variant_overrides(kind, vocab) + seed_overrides
                print(f"== {name} {' '.join(seed_overrides)}", flush=True)
                sweep.run_variant(spec, overrides + extra, workdir)
                runs.append({**sweep.summarize(workdir), **last_eval(workdir)})
            results[name] = {**sweep.aggregate(runs), "per_seed": runs}
    return results


def _cell(r: dict, key: str, fmt: str) -> str:
    if r.get(key) is None:
        return "n/a"
    if r.get("n_seeds", 1) > 1 and key + "_std" in r:
        return f"{fmt.format(r[key])} ± {fmt.format(r[key + '_std'])}"
    return fmt.format(r[key])


def markdown(results: dict, scaffold: dict, seeds: int) -> str:
    lines = ["| tokenizer | \\|V\\| | bytes/token (validation) | eval loss (nats/token) "
             f"| eval bits/byte (mean ± std, {seeds} seeds) | HF export identical |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        hf = r.get("hf_export")
        lines.append(f"| {r['kind']} | {r['vocab']} | {r['bytes_per_token']:.3f} | "
                     f"{_cell(r, 'eval_loss', '{:.4f}')} | "
                     f"{_cell(r, 'eval_bits_per_byte', '{:.4f}')} | "
                     + (f"{hf['identical']}/{hf['texts']} texts |" if hf else "n/a |"))
    lines += ["", "Scaffold tokens under plain BPE (plain BPE's learned tokens that "
              "Scaffold-BPE's final scaffold set S holds):", "",
              "| \\|V\\| | \\|S\\| | in plain BPE's V | share of \\|V\\| | examples |",
              "|---:|---:|---:|---:|---|"]
    for vocab, s in scaffold.items():
        examples = ", ".join(f"`{e!r}`" for e in s["examples"][:6])
        lines.append(f"| {vocab} | {s['scaffold_set']} | {s['scaffold_in_bpe']} | "
                     f"{100 * s['scaffold_share']:.1f}% | {examples} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, kinds, vocabs, out: str) -> str:
    """Bytes per token and eval bits per byte (± std over seeds), grouped by |V|."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    panels = [("bytes_per_token", "bytes / token (validation)"),
              ("eval_bits_per_byte", "eval bits / byte (lower is better)")]
    x, width = np.arange(len(vocabs)), 0.8 / len(kinds)
    for p, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, p + 1)
        for i, kind in enumerate(kinds):
            rows = [results[f"{kind}_{v}"] for v in vocabs]
            ax.bar(x + (i - (len(kinds) - 1) / 2) * width, [r[key] for r in rows], width,
                   yerr=[r.get(key + "_std", 0.0) for r in rows], capsize=3, label=kind,
                   color=f"C{i}")
        ax.set_xticks(x, [f"|V|={v}" for v in vocabs])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        if key == "eval_bits_per_byte":
            lo = min(results[f"{k}_{v}"][key] for k in kinds for v in vocabs)
            ax.set_ylim(bottom=0.9 * lo)
    fig.axes[0].legend()
    fig.tight_layout()
    fig.savefig(out)
    return out


def main(argv=None) -> int:
    spec, overrides, rest = config_lib.parse_cli(sys.argv[1:] if argv is None else argv)
    overrides = ["data.eval_batches=0"] + overrides  # the same validation text for every kind
    parser = argparse.ArgumentParser(prog="experiments/tokenizers.py")
    parser.add_argument("--root", required=True, help="directory for workdirs and results")
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 8192],
                        help="vocabulary sizes |V| (tokenizer and model)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", type=int, default=3, help="pretraining runs per variant")
    parser.add_argument("--steps", type=int, default=0, help="override train.steps")
    args = parser.parse_args(rest)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    spec = spec or DEFAULT_CONFIG
    if args.steps:
        overrides = overrides + [f"train.steps={args.steps}"]
    os.makedirs(args.root, exist_ok=True)
    compression, scaffold, hf_check = tokenizer_stats(spec, overrides, args.kinds, args.vocab)
    results = train_runs(spec, overrides, args.kinds, args.vocab, args.seeds, args.root)
    for name, r in results.items():
        kind, vocab = name.rsplit("_", 1)
        r.update(kind=kind, vocab=int(vocab), bytes_per_token=compression[name])
        if name in hf_check:
            r.update(hf_export=hf_check[name])
        if kind == "bpe":
            r.update(scaffold_in_bpe=scaffold[int(vocab)]["scaffold_in_bpe"],
                     scaffold_share=scaffold[int(vocab)]["scaffold_share"])
    table = markdown(results, scaffold, args.seeds)
    with open(os.path.join(args.root, "results.md"), "w") as f:
        f.write(f"# Tokenizer ablation of `{spec}`\n\noverrides: `{' '.join(overrides)}`\n\n"
                + table)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump({"config": spec, "overrides": overrides, "seeds": args.seeds,
                   "vocab": args.vocab, "kinds": args.kinds, "results": results,
                   "scaffold": {str(v): s for v, s in scaffold.items()}}, f, indent=2)
    plot(results, args.kinds, args.vocab, os.path.join(args.root, "tokenizers.png"))
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
