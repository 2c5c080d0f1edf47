"""Post-training on the embedded data, from the tiny pretraining.

Runs (each a few minutes on 2 CPU cores): tiny pretraining (or reuses --pretrained) ->
reward model, dense and MoE (the tiny run upcycled to 4 experts); SFT plain, SFT with
negative feedback (same data order and seed) and plain SFT with another seed (the noise
level) -> DPO from the plain SFT policy. Measures each on held-out records before and
after training and writes ``results.json``, ``results.md`` and ``post_training.png``:

    python experiments/post_training.py --out runs/post_training [--pretrained runs/tiny]

--scale 0.1 shortens every stage (a smoke run). Extra `--config.*`-style overrides go to
every post-training stage, e.g. --set data.records.max_train=2000.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kyx import config as config_lib  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402
from kyx.commands import upcycle  # noqa: E402
from kyx.train import loop, registry  # noqa: E402
from kyx.train.evaluation import trainer_eval  # noqa: E402

KEYS = {"rm": ("eval/accuracy", "eval/margin", "eval/loss", "eval/accuracy_strength2",
               "eval/accuracy_strength3"),
        "sft": ("eval/loss", "eval/neg_logp", "eval/neg_prob", "eval/neg_unlikelihood",
                "eval/neg1_logp", "eval/neg2_logp"),
        "dpo": ("eval/rewards/margin", "eval/rewards/accuracy", "eval/loss",
                "eval/logps/chosen", "eval/logps/rejected")}


def load(name, overrides):
    return config_lib.load(os.path.join(ROOT, "configs", f"{name}.py") + ":tiny", overrides)


def initial_eval(trainer) -> dict:
    """The trainer's eval metrics at its starting params (before any update)."""
    params = {name: spec.init() for name, spec in trainer.models.items() if spec.init}
    return trainer_eval(trainer, params)[0]


def stage(name, workdir, overrides, log):
    """Train one stage (resuming if its workdir exists); returns before/after/curves."""
    cfg = load(name, overrides)
    t0 = time.time()
    trainer = registry.build(cfg)
    before = initial_eval(trainer)
    loop.run(trainer, workdir)
    rows = read_metrics(workdir)
    evals = [r for r in rows if any(k in r for k in KEYS[name])]
    after = {k: evals[-1][k] for k in KEYS[name] if k in evals[-1]}
    curves = {k: [(0, before[k])] + [(r["step"], r[k]) for r in evals if k in r]
              for k in KEYS[name] if k in before}
    out = {"before": {k: before[k] for k in KEYS[name] if k in before}, "after": after,
           "curves": curves, "seconds": round(time.time() - t0, 1),
           "steps": cfg.train.steps}
    log(f"{name} -> {workdir}: before {out['before']} after {after} ({out['seconds']} s)")
    return out


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for key, label in (("rm", "dense"), ("rm_moe", "MoE (4 experts)")):
        if key in results:
            c = results[key]["curves"]["eval/accuracy"]
            ax[0, 0].plot(*zip(*c), "o-", label=f"{label}: held-out accuracy")
    ax[0, 0].axhline(0.5, color="gray", ls=":", label="chance")
    ax[0, 0].set_title("reward model (Bradley-Terry)")
    dpo = results["dpo"]["curves"]
    ax[0, 1].plot(*zip(*dpo["eval/rewards/margin"]), "o-", label="implicit reward margin")
    ax2 = ax[0, 1].twinx()
    ax2.plot(*zip(*dpo["eval/rewards/accuracy"]), "s--", color="C1", label="accuracy")
    ax2.set_ylim(0, 1)
    ax[0, 1].set_title("DPO on held-out pairs (margin; accuracy dashed)")
    for label, key in (("plain SFT", "sft"), ("plain SFT, seed 1", "sft_seed1"),
                       ("SFT + NF, λ 1", "sft_nf"), ("SFT + NF, λ 0.3", "sft_nf03")):
        if key not in results:
            continue
        c = results[key]["curves"]
        ax[1, 0].plot(*zip(*c["eval/neg_logp"]), "o-", label=label)
        ax[1, 1].plot(*zip(*c["eval/loss"]), "o-", label=label)
    ax[1, 0].set_title("negatives: mean token log-prob (held out)")
    ax[1, 1].set_title("positives: response CE (held out)")
    for a in ax.flat:
        a.set_xlabel("step")
        a.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results) -> str:
    r = results
    f = lambda x: f"{x:.4g}"  # noqa: E731
    rows = [
        ("RM held-out pairwise accuracy", r["rm"]["before"]["eval/accuracy"],
         r["rm"]["after"]["eval/accuracy"]),
        ("RM held-out mean margin r_c - r_r", r["rm"]["before"]["eval/margin"],
         r["rm"]["after"]["eval/margin"]),
        ("DPO held-out implicit reward margin", r["dpo"]["before"]["eval/rewards/margin"],
         r["dpo"]["after"]["eval/rewards/margin"]),
        ("DPO held-out reward accuracy (chosen > rejected)",
         r["dpo"]["before"]["eval/rewards/accuracy"], r["dpo"]["after"]["eval/rewards/accuracy"]),
        ("DPO held-out loss", r["dpo"]["before"]["eval/loss"], r["dpo"]["after"]["eval/loss"]),
    ]
    sft_runs = (("sft", "plain SFT"), ("sft_seed1", "plain SFT (seed 1)"),
                ("sft_nf", "SFT + negative feedback (λ 1)"),
                ("sft_nf03", "SFT + negative feedback (λ 0.3)"))
    sft_keys = (("eval/loss", "positives' response CE"),
                ("eval/neg_logp", "negatives' mean token log-prob"),
                ("eval/neg_prob", "negatives' mean token probability"),
                ("eval/neg_unlikelihood", "negatives' unlikelihood −log(1−p)"),
                ("eval/neg1_logp", "repetition-loop negatives' log-prob"),
                ("eval/neg2_logp", "foreign-lines negatives' log-prob"))
    for key, label in sft_runs:
        for metric, what in sft_keys:
            if key in r and metric in r[key]["after"]:
                rows.append((f"{label}: {what}", r[key]["before"][metric],
                             r[key]["after"][metric]))
    if "rm_moe" in r:
        rows.insert(2, ("MoE RM (tiny upcycled to 4 experts) held-out accuracy",
                        r["rm_moe"]["before"]["eval/accuracy"],
                        r["rm_moe"]["after"]["eval/accuracy"]))
    for key in ("rm", "rm_moe"):
        for level, name in ((3, "repetition loops"), (2, "lines from elsewhere")):
            k = f"eval/accuracy_strength{level}"
            if key in r and k in r[key]["after"]:
                rows.append((f"{'MoE ' if key == 'rm_moe' else ''}RM accuracy on {name}",
                             r[key]["before"][k], r[key]["after"][k]))
    lines = ["| measurement (held-out records) | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {f(a)} | {f(b)} |" for name, a, b in rows]
    secs = ", ".join(f"{k} {v['seconds']} s / {v['steps']} steps" for k, v in r.items()
                     if isinstance(v, dict) and "steps" in v)
    notes = ("DPO reward accuracy counts strict wins (chosen reward > rejected reward, as TRL), "
             "so the ties at step 0 (policy = reference) count as 0. Negative slots of the mined "
             "data: 1 = repetition loop, 2 = lines from another function.")
    return "\n".join(lines) + f"\n\n{notes}\n\nWall time (this machine): {secs}.\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "post_training"))
    p.add_argument("--pretrained", default="", help="tiny pretraining workdir to reuse")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every post-training stage")
    p.add_argument("--no-moe", action="store_true", help="skip the MoE reward model")
    p.add_argument("--no-noise", action="store_true", help="skip the second plain-SFT seed")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.md and the plot from an existing results.json")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.report_only:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        return report(results, args.out, print)
    logf = open(os.path.join(args.out, "log.txt"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    steps = lambda n: max(int(n * args.scale), 4)  # noqa: E731
    common = ["train.measure_mfu=false"] + list(args.set)
    pre = args.pretrained or os.path.join(args.out, "pretrain")
    t0 = time.time()
    if not args.pretrained:
        n = steps(600)
        loop.run(registry.build(load("pretrain", [f"train.steps={n}",
                                                  f"train.eval_every={max(n // 4, 1)}",
                                                  "train.measure_mfu=false"])), pre)
    results = {"pretrain": {"workdir": pre, "seconds": round(time.time() - t0, 1)}}
    init = [f"init_from={pre}"]
    n = steps(300)
    every = [f"train.steps={n}", f"train.eval_every={max(n // 6, 1)}"]
    results["rm"] = stage("rm", os.path.join(args.out, "rm"), common + init + every, log)
    if not args.no_moe:  # the MoE reward model, from the tiny run upcycled to 4 experts
        moe = os.path.join(args.out, "pretrain_moe4")
        if not os.path.exists(moe):
            upcycle.main(["--workdir", pre, "--out", moe, "--num-experts", "4", "--top-k", "2"])
        results["rm_moe"] = stage("rm", os.path.join(args.out, "rm_moe"),
                                  common + [f"init_from={moe}"] + every, log)
    results["sft"] = stage("sft", os.path.join(args.out, "sft"), common + init + every, log)
    results["sft_nf"] = stage("sft", os.path.join(args.out, "sft_nf"),
                              common + init + every + ["loss.negative_feedback=true"], log)
    results["sft_nf03"] = stage("sft", os.path.join(args.out, "sft_nf03"),
                                common + init + every + ["loss.negative_feedback=true",
                                                         "loss.neg_weight=0.3"], log)
    if not args.no_noise:  # seed-to-seed spread of plain SFT: the "noise" for positives' CE
        results["sft_seed1"] = stage("sft", os.path.join(args.out, "sft_seed1"),
                                     common + init + every + ["train.seed=1", "data.seed=1"], log)
    n = steps(200)
    dpo_args = [f"init_from={os.path.join(args.out, 'sft')}", f"train.steps={n}",
                f"train.eval_every={max(n // 5, 1)}"]
    results["dpo"] = stage("dpo", os.path.join(args.out, "dpo"), common + dpo_args, log)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return report(results, args.out, log)


def report(results, out, log):
    md = table(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("# Post-training on the embedded data (tiny)\n\n" + md)
    plot(results, os.path.join(out, "post_training.png"))
    log(md)
    return results


if __name__ == "__main__":
    main()
