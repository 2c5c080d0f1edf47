"""Training-row samplers on `tiny` (packed, iid, stratified): loss noise, final eval loss, one PNG.

Train them (same seed and steps; log every step), then compare:

    kyx train --config configs/pretrain.py:tiny --workdir runs/stratified --config.train.log_every=1
    kyx train --config configs/pretrain.py:tiny --workdir runs/packed --config.train.log_every=1 \\
        --config.data.sampling=packed
    python experiments/data_sampling.py runs/packed runs/stratified --out docs/images/samplers.png

Prints one JSON line per run: the std of step-to-step train-loss differences over the last
``--last`` steps and the final eval loss.

Several seeds (``experiments/sweep.py --config configs/pretrain.py:tiny --sweep sampling
--seeds 3 --root R --config.train.log_every=1``): ``--root R`` reads ``R/<variant>/seed<k>``
and prints, per variant, mean ± std over seeds of: the lag-1 std above, the std of
differences 20 steps apart (the default ``log_every``, i.e. what a loss curve shows), and
the std of the residual around a 51-step moving average; then the ratios of the first
variant (packed) to each other one, per seed.

``--floor`` separates sampling noise from training dynamics: with the final params of the
first iid run fixed, it draws ``--floor-batches`` consecutive training batches from each
sampler (a seed the run never used) and reports the std of consecutive batch-loss
differences. For i.i.d. windows that is the noise floor of a simple random batch of this
size; stratified batches (one window per difficulty stratum) go below it. It also prints
how well the stratified sampler's difficulty key correlates with those params' loss per
window.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kyx import metrics  # noqa: E402


def summary(workdir: str, last: int) -> dict:
    rows = metrics.read_metrics(workdir)
    train = sorted((r["step"], r["train/loss"]) for r in rows if "train/loss" in r)
    loss = np.asarray([v for _, v in train])[-last:]
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    return {"workdir": workdir, "steps": train[-1][0],
            "std_step_diff_last": round(float(np.std(np.diff(loss))), 4),
            "mean_train_loss_last": round(float(loss.mean()), 4),
            "final_eval_loss": round(evals[-1][1], 4), "train": train, "eval": evals}


def noise(loss: np.ndarray) -> dict:
    """Noise measures of a train-loss series (its last steps, logged every step)."""
    w = 51
    trend = np.convolve(loss, np.ones(w) / w, mode="valid")
    resid = loss[w // 2: w // 2 + len(trend)] - trend
    return {"std_diff_lag1": float(np.std(np.diff(loss))),
            "std_diff_lag20": float(np.std(loss[20:] - loss[:-20])),
            "std_resid_ma51": float(np.std(resid))}


def seed_table(root: str, variants: list[str], seeds: int, last: int) -> dict:
    out = {}
    for v in variants:
        per_seed = []
        for k in range(seeds):
            s = summary(os.path.join(root, v, f"seed{k}"), last)
            loss = np.asarray([x for _, x in s.pop("train")])[-last:]
            s.pop("eval")
            per_seed.append({**noise(loss), "final_eval_loss": s["final_eval_loss"],
                             "mean_train_loss_last": s["mean_train_loss_last"]})
        out[v] = {key: (float(np.mean([r[key] for r in per_seed])),
                        float(np.std([r[key] for r in per_seed], ddof=1)))
                  for key in per_seed[0]}
        out[v]["per_seed"] = per_seed
    return out


def row_ce_sums(loaded):
    """jitted (params, batch) -> (summed target CE per row [B], target tokens per row [B])."""
    import jax
    import jax.numpy as jnp

    from kyx.objectives import lm

    @jax.jit
    def sums(params, batch):
        logits, _ = loaded.model.apply({"params": params}, batch["tokens"],
                                       batch["segment_ids"], batch["positions"])
        ce, _ = lm.token_cross_entropy(logits, batch["targets"])
        m = batch["loss_mask"].astype(jnp.float32)
        return jnp.sum(ce * m, 1), jnp.sum(m, 1)
    return sums


KEYS = ("tokens", "segment_ids", "positions", "targets", "loss_mask")


def batch_losses(workdir: str, sampling: str, batches: int, seed: int) -> np.ndarray:
    """Mean train-batch CE of ``batches`` consecutive batches at the run's final params."""
    import kyx
    from kyx.data import pipeline

    loaded = kyx.load(workdir)
    cfg = loaded.config.data
    with cfg.unlocked():
        cfg.sampling, cfg.seed = sampling, seed
    corpus = pipeline.load_corpus(cfg)  # the run's own tokenizer, not a retrained one
    it = pipeline.make_iterator(cfg, corpus, loaded.tokenizer, "train")
    sums = row_ce_sums(loaded)
    out = []
    for _ in range(batches):
        ce, n = sums(loaded.params, {k: v for k, v in next(it).items() if k in KEYS})
        out.append(float(np.sum(ce) / np.sum(n)))
    return np.asarray(out)


def key_correlation(workdir: str, windows_n: int = 4096, seed: int = 0) -> dict:
    """Pearson correlation between the stratified sampler's difficulty key (unigram
    surprise) and the run's own per-window loss, over ``windows_n`` random windows."""
    import kyx
    from kyx.data import pipeline, windows

    loaded = kyx.load(workdir)
    cfg = loaded.config.data
    with cfg.unlocked():
        cfg.sampling = "iid"
    it = pipeline.make_iterator(cfg, pipeline.load_corpus(cfg), loaded.tokenizer, "train")
    key = windows.unigram_surprise(it.cache, it.seq_len, it.num_windows)
    picked = np.random.default_rng(seed).choice(it.num_windows, windows_n, replace=False)
    sums = row_ce_sums(loaded)
    per_window = []
    for chunk in np.array_split(picked, max(1, windows_n // 256)):
        ce, n = sums(loaded.params, {k: v for k, v in it.rows(chunk).items() if k in KEYS})
        per_window.append(np.asarray(ce) / np.maximum(np.asarray(n), 1))
    per_window = np.concatenate(per_window)
    return {"key_correlation": round(float(np.corrcoef(key[picked], per_window)[0, 1]), 4),
            "windows": windows_n, "params": workdir}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="*")
    p.add_argument("--root", help="a sweep root with <variant>/seed<k> workdirs")
    p.add_argument("--variants", nargs="+", default=["packed", "iid", "stratified"],
                   help="the first is the baseline of the printed ratios")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--floor", action="store_true")
    p.add_argument("--floor-batches", type=int, default=300)
    p.add_argument("--labels", nargs="+")
    p.add_argument("--last", type=int, default=300)
    p.add_argument("--out", default="docs/images/samplers.png")
    args = p.parse_args()
    if args.root:
        table = seed_table(args.root, args.variants, args.seeds, args.last)
        for v, row in table.items():
            print(json.dumps({"variant": v, "seeds": args.seeds, **{
                k: [round(x, 4) for x in val] for k, val in row.items() if k != "per_seed"},
                "per_seed": row["per_seed"]}))
        a = args.variants[0]
        for b in args.variants[1:]:
            print(json.dumps({"ratio": f"{a}/{b}", **{
                k: [round(ra[k] / rb[k], 3) for ra, rb in zip(table[a]["per_seed"],
                                                              table[b]["per_seed"])]
                for k in ("std_diff_lag1", "std_diff_lag20", "std_resid_ma51")}}))
        if args.floor:
            workdir = os.path.join(args.root, "iid", "seed0")
            for sampling in args.variants:
                losses = batch_losses(workdir, sampling, args.floor_batches, seed=12345)
                print(json.dumps({"floor": sampling, "params": workdir,
                                  "batches": len(losses),
                                  "std_batch_loss": round(float(np.std(losses)), 4),
                                  **{k: round(v, 4) for k, v in noise(losses).items()}}))
            print(json.dumps(key_correlation(workdir)))
        args.workdirs = args.workdirs or [os.path.join(args.root, v, "seed0")
                                          for v in args.variants]
        args.labels = args.labels or [f"{v} (seed 0)" for v in args.variants]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for workdir, label in zip(args.workdirs, args.labels or args.workdirs):
        s = summary(workdir, args.last)
        steps, loss = zip(*s.pop("train"))
        evals = s.pop("eval")
        print(json.dumps({"label": label, **s}))
        line, = ax.plot(steps, loss, lw=0.8, alpha=0.8,
                        label=f"{label}: train (std of step diffs {s['std_step_diff_last']})")
        ax.plot(*zip(*evals), "o-", color=line.get_color(), ms=5,
                label=f"{label}: eval (final {s['final_eval_loss']})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(top=9)
    ax.legend(fontsize=8)
    ax.set_title("pretrain.py:tiny, seed 0: " + " vs ".join(args.variants if args.root else
                                                             args.labels or args.workdirs))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
