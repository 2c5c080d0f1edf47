"""Reproduce the papers' effects at small scale: one command per study, seeds and spreads.

    python experiments/reproduce.py --study mile [--seeds 3] [--steps N] [--root runs/reproduce]
    python experiments/reproduce.py --all
    python experiments/reproduce.py --render mile          # its table again, from results.json
    python experiments/reproduce.py --page docs/results.md  # every finished study on one page

A study is a sweep function in a config file (variants of one preset differing in one
technique, run by experiments/sweep.py's runner with ``train.seed = data.seed = k`` for
k < seeds), the measurements taken on every finished run beyond the sweep's own (held-out
loss per token-frequency bucket, loss at twice the training length, logit statistics,
divergence), and the papers' claims as (metric, baseline, variant, better). Each claim gets
a verdict from a two-sided test over the seeds (kyx/analysis/verdict.py): reproduced /
opposite (p < 0.05) / not at this scale. Runs and measurements are cached in their
workdirs, so an interrupted study resumes; ``ROOT/<study>/results.json`` holds every
number and ``results.md`` is rendered from it alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

import numpy as np  # noqa: E402
import sweep  # noqa: E402  (experiments/sweep.py: the runner every study uses)

from kyx import config as config_lib  # noqa: E402
from kyx.analysis import verdict  # noqa: E402
from kyx.checkpoint.workdir_lock import WorkdirLock  # noqa: E402
from kyx.compilation_cache import enable_compilation_cache  # noqa: E402
from kyx.errors import KyxError  # noqa: E402
from kyx.fileio import atomic_write  # noqa: E402
from kyx.metrics import read_metrics  # noqa: E402
from kyx.registry import Registry  # noqa: E402

RUN_FILE = "study_run.json"          # per workdir: wall seconds, error (a diverged run)
MEASURES_FILE = "study_measures.json"  # per workdir: cached measurements by name
PLOT = "loss_curves.png"             # per study: train CE and eval loss, seed means


@dataclasses.dataclass(frozen=True)
class Claim:
    text: str          # the paper's claim, in a few words
    source: str        # paper
    metric: str        # a per-run number (sweep summary or a measure)
    baseline: str      # variant names
    variant: str
    better: str = "lower"
    binary: bool = False   # a 0/1 outcome per run: Fisher's exact test on counts
    target: float | None = None   # a level claim: variant vs this number (baseline unused)


@dataclasses.dataclass(frozen=True)
class Study:
    title: str
    config: str                       # PATH:PRESET
    sweep: str                        # function in the config file
    columns: tuple[tuple[str, str, str], ...]   # (metric, header, format)
    claims: tuple[Claim, ...]
    measures: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()   # added to every variant


STUDIES = Registry("study")
MEASURES = Registry("measure")
PREPARES = Registry("prepare")    # a variant's "prepare": fn(spec, overrides, study_dir,
#                                   workdir) makes what it needs first -> extra overrides
VARIANT_KEYS = (*sweep.VARIANT_KEYS, "prepare")


def study(name: str, spec: Study) -> None:
    STUDIES.register(name, spec=spec)(lambda: spec)


def read_json(path: str):
    """A file this runner wrote; a damaged one is an error naming it (delete it to redo)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path} is unreadable ({e}); delete it to redo that step") from None


# ----------------------------------------------------------------------------- measures
@MEASURES.register("frequency")
def _frequency(workdir: str, run: dict) -> dict:
    """Held-out loss per token-frequency bucket (heldout_*; 32 validation batches)."""
    from kyx.analysis import heldout
    if run.get("error"):
        return {}
    out = heldout.evaluate(workdir, max_batches=32)
    return {f"heldout_{k}": v for k, v in out.items() if k != "seq_len"}


@MEASURES.register("length_2x")
def _length_2x(workdir: str, run: dict) -> dict:
    """Held-out loss at twice the training length (x2_*; beyond = positions >= train len)."""
    from kyx.analysis import heldout
    if run.get("error"):
        return {}
    seq_len = int(config_lib.load_json(os.path.join(workdir, "config.json")).data.seq_len)
    out = heldout.evaluate(workdir, seq_len=2 * seq_len, frequency=False)
    return {f"x2_{k}": v for k, v in out.items() if k != "seq_len"}


@MEASURES.register("logits")
def _logits(workdir: str, run: dict) -> dict:
    """Logit scale over training (lm.logit_stats): the mean per-token max logit over the last
    10% of steps, its largest value at any step, and the mean log Z over the last 10%."""
    rows = [r for r in read_metrics(workdir) if "train/logits/max_mean" in r]
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 10):]
    finite = [r["train/logits/max_peak"] for r in rows if math.isfinite(r["train/logits/max_peak"])]
    return {"logit_max_mean": float(np.mean([r["train/logits/max_mean"] for r in tail])),
            "logit_max_peak": float(max(finite)) if finite else None,
            "logit_lse_mean": float(np.mean([r["train/logits/lse_mean"] for r in tail]))}


EXCP_PHASES = ("early", "mid", "late")


@MEASURES.register("excp_phases")
def _excp_phases(workdir: str, run: dict) -> dict:
    """ExCP at three points of the run's chain (early = the first residual step, mid, late =
    the last): compression ratio, weight reconstruction error (||W - W_hat|| / ||W||) and
    the eval-loss change (%) of continuing checkpoint.every // 3 steps from the ExCP
    reconstruction instead of the full checkpoint (kyx/train/continuation.py; the full-
    checkpoint continuations are cached beside the shared run). Plus the ratio of the
    whole chain after its first step."""
    from kyx.checkpoint.excp import ExcpChain
    from kyx.train.continuation import continuation
    chain = ExcpChain(os.path.join(workdir, "excp"))
    steps, stats = chain.steps(), chain.stats()
    if len(steps) < 2:
        raise KyxError(f"{workdir}: the ExCP chain has {len(steps)} step(s); the excp study "
                       "needs checkpoint.every well below train.steps")
    _, cont, base = _excp_variant(workdir)
    rest = steps[1:]
    picks = dict(zip(EXCP_PHASES, (rest[0], rest[len(rest) // 2], rest[-1])))
    out = {"excp_chain_ratio": sum(stats[s]["orig_bytes"] for s in rest)
           / sum(stats[s]["bytes"] for s in rest), "excp_continue_steps": float(cont)}
    scratch, recon = workdir + "_continuations", {}
    for phase, step in picks.items():
        full = _full_continuation(base, step, cont)
        if step not in recon:
            recon[step] = continuation(workdir, os.path.join(scratch, f"excp_{step}"), step,
                                       cont, "excp")
        out.update({f"excp_step_{phase}": float(step),
                    f"excp_ratio_{phase}": stats[step]["ratio"],
                    f"excp_werr_{phase}": stats[step]["groups"]["w"]["rel_err"],
                    f"excp_dloss_pct_{phase}": 100 * (recon[step] - full) / full})
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _excp_variant(workdir: str):
    """(config, continuation steps = checkpoint.every // 3, the shared run it copies) of an
    excp study variant."""
    cfg = config_lib.load_json(os.path.join(workdir, "config.json"))
    base = read_json(os.path.join(workdir, EXCP_BASE_FILE))["base"]
    return cfg, max(1, int(cfg.checkpoint.every) // 3), base


def _full_continuation(base: str, step: int, steps: int) -> float:
    """Eval loss of continuing the shared run ``base`` for ``steps`` steps from its full
    checkpoint ``step`` (cached beside the run: every variant compares against it)."""
    from kyx.train.continuation import continuation
    path, key = os.path.join(base, "full_continuations.json"), f"{step}+{steps}"
    cache = read_json(path) if os.path.exists(path) else {}
    if key not in cache:
        scratch = base + f"_full_{step}"
        cache[key] = continuation(base, scratch, step, steps)
        shutil.rmtree(scratch, ignore_errors=True)
        atomic_write(path, json.dumps(cache))
    return cache[key]


@MEASURES.register("excp_late_chain")
def _excp_late_chain(workdir: str, run: dict) -> dict:
    """ExCP as the paper runs it: its chain begins in a late, low-learning-rate phase from
    an uncompressed checkpoint (phase 2 of its Pythia run), not at the start of training.
    The shared run's last third of checkpoints is recompressed with the variant's settings
    into a fresh chain (its first step lossless); at the chain's last step: ratio, weight
    error and the eval-loss change of a continuation from it vs the full checkpoint."""
    from kyx.checkpoint.excp import ExcpChain
    from kyx.commands.excp import recompress
    from kyx.train.continuation import continuation
    steps = ExcpChain(os.path.join(workdir, "excp")).steps()
    start = steps[-1 - max(1, (len(steps) - 1) // 3)]
    cfg, cont, base = _excp_variant(workdir)
    scratch = workdir + "_late_chain"
    last = recompress(base, os.path.join(scratch, "run"), start=start, **_excp_options(cfg))[-1]
    full = _full_continuation(base, last["step"], cont)
    recon = continuation(os.path.join(scratch, "run"), os.path.join(scratch, "continued"),
                         last["step"], cont, "excp")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"excp_step_latechain_start": float(start), "excp_ratio_latechain": last["ratio"],
            "excp_werr_latechain": last["groups"]["w"]["rel_err"],
            "excp_dloss_pct_latechain": 100 * (recon - full) / full}


SPIKE_NATS = 1.0   # a final train loss this far above the run's best counts as diverged


@MEASURES.register("divergence")
def _divergence(workdir: str, run: dict) -> dict:
    """1.0 if the run diverged: it stopped on a non-finite loss, skipped a non-finite step,
    or ended more than SPIKE_NATS above its best train loss (0.0 otherwise)."""
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    losses = [r["train/loss"] for r in rows]
    skipped = sum(r.get("train/skipped", 0.0) for r in rows)
    finite = [x for x in losses if math.isfinite(x)]
    spiked = bool(finite) and (not math.isfinite(losses[-1])
                               or losses[-1] - min(finite) > SPIKE_NATS)
    return {"diverged": float(bool(run.get("error")) or skipped > 0 or spiked or not finite),
            "skipped_steps": float(skipped)}


# ----------------------------------------------------------------------------- prepares
WARM_START_DATA_SEED = 1000   # the MoE phase reads other windows than the dense phase


@PREPARES.register("upcycle_half")
def _upcycle_half(spec: str, overrides: list[str], study_dir: str, workdir: str) -> list[str]:
    """HunYuan's warm start by expanding experts at equal total steps N: the dense model of
    the same preset (``model.moe_num_experts=0``, same seed) trains N // 2 steps in
    ``<study>/_prepare/<run>/dense``, `kyx upcycle` copies its FFN into the MoE shape of
    ``spec`` (noise 0.01) in ``.../upcycled``, and the variant trains the other N - N // 2
    steps from it (``init_from``; a fresh optimizer, the preset's warmup) on other windows
    (data seed + 1000). Both phases are reused when finished."""
    from kyx.commands.upcycle import upcycle_workdir
    cfg = config_lib.load(spec, overrides)
    total, m = int(cfg.train.steps), cfg.model
    if total < 2 or m.moe_num_experts < 2:
        raise KyxError(f"prepare 'upcycle_half' needs a MoE preset and train.steps >= 2 (got "
                       f"{m.moe_num_experts} experts, {total} steps)")
    root = os.path.join(study_dir, "_prepare", os.path.relpath(workdir, study_dir))
    dense = os.path.join(root, "dense")
    sweep.run_variant(spec, overrides + ["model.moe_num_experts=0", f"train.steps={total // 2}"],
                      dense)
    upcycled = os.path.join(root, "upcycled")
    done = os.path.join(root, "upcycled.json")
    if not os.path.exists(done):
        shutil.rmtree(upcycled, ignore_errors=True)   # of an interrupted upcycle
        upcycle_workdir(dense, upcycled, m.moe_num_experts, m.moe_top_k, m.moe_every,
                        m.moe_first_dense, seed=int(cfg.train.seed),
                        moe_dispatch=m.moe_dispatch, moe_capacity_factor=m.moe_capacity_factor)
        atomic_write(done, json.dumps({"dense_steps": total // 2}))
    return [f"init_from={upcycled}", f"train.steps={total - total // 2}",
            f"data.seed={int(cfg.data.seed) + WARM_START_DATA_SEED}"]


EXCP_BASE_FILE = "excp_base.json"   # in a variant workdir: the shared run it was copied from


def _excp_options(cfg) -> dict:
    """The run's compression-only settings (they change the chain, not the training)."""
    from kyx.checkpoint.excp import ExcpOptions
    return {f.name: cfg.checkpoint.excp[f.name] for f in dataclasses.fields(ExcpOptions)
            if f.name in cfg.checkpoint.excp}


@PREPARES.register("excp_shared_run")
def _excp_shared_run(spec: str, overrides: list[str], study_dir: str, workdir: str
                     ) -> list[str]:
    """Variants that differ only in ExCP settings share one training run per seed: it
    trains once in ``<study>/_prepare/excp_run/seed<k>`` (full checkpoints kept) and each
    variant's workdir is a copy whose full checkpoints are compressed anew with the
    variant's settings (`kyx excp` recompress), so the runner finds it finished."""
    from kyx.commands import excp as excp_cli
    cfg = config_lib.load(spec, overrides)
    options = _excp_options(cfg)
    keys = tuple(f"checkpoint.excp.{k}=" for k in options)
    shared = [o for o in overrides if not o.startswith(keys)]
    base = os.path.join(study_dir, "_prepare", "excp_run", f"seed{int(cfg.train.seed)}")
    stamp = os.path.join(base, "shared_overrides.json")
    if os.path.exists(stamp) and read_json(stamp) != shared:
        raise SystemExit(f"{base} was trained with other overrides; give another --root or "
                         "delete it")
    if not os.path.exists(stamp):   # before training: an interrupted base is checked too
        os.makedirs(base, exist_ok=True)
        atomic_write(stamp, json.dumps(shared))
    sweep.run_variant(spec, shared, base)
    if not os.path.exists(os.path.join(workdir, EXCP_BASE_FILE)):
        excp_cli.recompress(base, workdir, **options)
        atomic_write(os.path.join(workdir, EXCP_BASE_FILE), json.dumps({"base": base}))
    return []


# ----------------------------------------------------------------------------- studies
EVAL = ("eval_loss", "eval loss", "{:.4f}")
study("mile", Study(
    title="MiLe loss vs cross entropy (KwaiYii)",
    config="configs/pretrain.py:tiny", sweep="mile_study", measures=("frequency",),
    columns=(EVAL, ("heldout_loss", "held-out loss", "{:.4f}"),
             ("heldout_loss_frequent", "frequent (80%)", "{:.4f}"),
             ("heldout_loss_medium", "medium (15%)", "{:.4f}"),
             ("heldout_loss_rare", "rare (5%)", "{:.4f}")),
    claims=(Claim("better learning of rare tokens", "Su et al. 2023 (MiLe)",
                  "heldout_loss_rare", "ce", "mile_g1.0"),
            Claim("better than CE overall (benchmarks there; held-out CE here)",
                  "Su et al. 2023 (MiLe)", "heldout_loss", "ce", "mile_g1.0"))))

def _stability_claims(suffix: str, lr: str) -> tuple[Claim, Claim]:
    """Max-z vs plain CE in bf16 at a raised learning rate: divergence count, final CE."""
    text = f"max-z stabilises training (bf16, {lr} lr: {{}})"
    return (Claim(text.format("diverged runs"), "Baichuan 2 (2309.10305)", "diverged",
                  f"ce{suffix}", f"max_z{suffix}", binary=True),
            Claim(text.format("final train CE"), "Baichuan 2 (2309.10305)",
                  "train_ce_last10pct", f"ce{suffix}", f"max_z{suffix}"))


study("logits", Study(
    title="max-z loss and z-loss (Baichuan 2, PaLM)",
    config="configs/pretrain.py:tiny", sweep="logit_study", measures=("logits", "divergence"),
    columns=(("train_ce_last10pct", "train CE (last 10%)", "{:.4f}"), EVAL,
             ("logit_max_mean", "max logit (last 10%)", "{:.2f}"),
             ("logit_max_peak", "max logit (peak)", "{:.2f}"),
             ("logit_lse_mean", "log Z (last 10%)", "{:.2f}"),
             ("diverged", "diverged", "{:.2f}")),
    claims=(Claim("max-z lowers the max logit", "Baichuan 2 (2309.10305)",
                  "logit_max_mean", "ce", "max_z"),
            Claim("z-loss pulls log Z toward 0", "PaLM (2204.02311)", "logit_lse_mean", "ce",
                  "z_loss"),
            *(claim for suffix, lr in (("_bf16_hot", "10x"), ("_bf16_lr0.1", "33x"))
              for claim in _stability_claims(suffix, lr)))))

study("head_position", Study(
    title="NormHead (Baichuan 2) and ALiBi vs RoPE",
    config="configs/pretrain.py:tiny", sweep="head_position_study",
    measures=("length_2x", "logits"),
    columns=(EVAL, ("x2_loss", "loss at 2x length", "{:.4f}"),
             ("x2_loss_within", "2x: positions < L", "{:.4f}"),
             ("x2_loss_beyond", "2x: positions >= L", "{:.4f}"),
             ("logit_max_mean", "max logit (last 10%)", "{:.2f}")),
    claims=(Claim("NormHead improves training", "Baichuan 2 (2309.10305)", "eval_loss",
                  "rope", "normhead"),
            Claim("ALiBi extrapolates beyond the training length", "Press et al. 2022 (ALiBi)",
                  "x2_loss_beyond", "rope", "alibi"),
            Claim("ALiBi matches RoPE at the training length (lower = ALiBi better)",
                  "Press et al. 2022 (ALiBi)", "eval_loss", "rope", "alibi"))))

study("moe_routing", Study(
    title="MoE routing: load balance, z-loss, routing-error loss, HunYuan's tricks",
    config="configs/moe.py:tiny", sweep="routing_study",
    columns=(EVAL, ("train_ce_last10pct", "train CE (last 10%)", "{:.4f}"),
             ("flagged_frac_mean", "flagged frac", "{:.4f}"),
             ("load_max_x_e", "max load x E", "{:.2f}"),
             ("router_entropy", "router entropy", "{:.3f}"),
             ("tokens_per_s", "tokens/s", "{:,.0f}")),
    claims=(Claim("the routing-error loss improves the model", "kyx, ALGORITHMS 11a (KwaiYii)",
                  "eval_loss", "lb", "lb_re"),
            Claim("router z-loss costs no quality (lower = z-loss better)",
                  "ST-MoE (2202.08906)", "eval_loss", "lb", "lb_z"),
            Claim("word-embedding routing matches hidden-state routing (lower = embedding "
                  "better)", "HunYuan-NLP 1T; Hash Layers (2106.04426)", "eval_loss", "lb",
                  "embed_route"),
            Claim("attention reuse p=0.5 costs little quality (lower = reuse better)",
                  "HunYuan-NLP 1T; Xiao et al. 2019", "eval_loss", "lb", "attn_reuse"),
            Claim("attention reuse p=0.5 trains faster", "HunYuan-NLP 1T; Xiao et al. 2019",
                  "tokens_per_s", "lb", "attn_reuse", better="higher"),
            Claim("a dense warm start beats a scratch MoE at equal total steps",
                  "HunYuan-NLP 1T; Sparse Upcycling (2212.05055)", "eval_loss", "lb",
                  "upcycled"))))

_EXCP = "ExCP (2406.11257)"
_EXCP_VARIANTS = (("a5e-5", "α 5e-5"), ("a5e-4", "α 5e-4"), ("a2e-3", "α 2e-3"),
                  ("werr1e-2", "W error ≤ 1%"))
study("excp", Study(
    title="ExCP checkpoint compression across a cosine run",
    config="configs/pretrain.py:tiny", sweep="excp_study",
    measures=("excp_phases", "excp_late_chain"),
    overrides=("train.steps=1500", "optim.schedule=cosine", "checkpoint.every=150",
               "train.eval_every=150", "checkpoint.keep=1000", "checkpoint.excp.enabled=true",
               "checkpoint.excp.keep_full=1000"),
    columns=(EVAL, *((f"excp_{m}_{p}", f"{h} {p}", f) for m, h, f in (
        ("ratio", "ratio", "{:.1f}"), ("dloss_pct", "Δ eval loss %", "{:+.3f}"),
        ("werr", "W error", "{:.2e}")) for p in EXCP_PHASES),
        ("excp_chain_ratio", "chain ratio", "{:.1f}"),
        ("excp_ratio_latechain", "late chain: ratio", "{:.1f}"),
        ("excp_dloss_pct_latechain", "late chain: Δ eval loss %", "{:+.3f}"),
        ("excp_werr_latechain", "late chain: W error", "{:.2e}")),
    claims=tuple(c for v, label in _EXCP_VARIANTS for phase, chain in (
        ("late", "chain from the start"), ("latechain", "chain begun late")) for c in (
        Claim(f"≥ 50x at the late phase (~70x on Pythia-410M), {label}, {chain}", _EXCP,
              f"excp_ratio_{phase}", "", v, better="higher", target=50.0),
        Claim(f"≤ 1% eval-loss change at the late phase, {label}, {chain}", _EXCP,
              f"excp_dloss_pct_{phase}", "", v, better="lower", target=1.0)))))


# ----------------------------------------------------------------------------- running
def run_once(spec: str, overrides: list[str], workdir: str, prepare_s: float = 0.0) -> dict:
    """Train (or reuse) one run; {wall_s, error, overrides}. A run stopped by a non-finite
    loss is a result of a stability study, recorded with its error, not a crash of the
    study. A finished run made with other overrides is refused, not silently reused."""
    path = os.path.join(workdir, RUN_FILE)
    if os.path.exists(path):
        run = read_json(path)
        if run.get("overrides") != overrides:
            raise SystemExit(f"{workdir} was trained with other overrides ({run.get('overrides')}"
                             f" vs {overrides}); give another --root or delete it")
        return run
    measures = os.path.join(workdir, MEASURES_FILE)
    if os.path.exists(measures):   # of an earlier, interrupted training of this workdir
        os.remove(measures)
    t0 = time.perf_counter()
    error = ""
    try:
        sweep.run_variant(spec, overrides, workdir)
    except KyxError as e:
        if "non-finite" not in str(e):
            raise
        error = str(e).splitlines()[0]
        print(f"{workdir}: {error}", flush=True)
    run = {"wall_s": round(time.perf_counter() - t0 + prepare_s, 1), "error": error,
           "overrides": overrides}
    atomic_write(path, json.dumps(run))
    return run


def measure(names, workdir: str, run: dict) -> dict:
    """The named measurements of one run, cached in the workdir (each timed into wall_s)."""
    path = os.path.join(workdir, MEASURES_FILE)
    cached = {}
    if os.path.exists(path):
        cached = read_json(path)
    out = {}
    for name in names:
        if name not in cached:
            t0 = time.perf_counter()
            cached[name] = {"values": MEASURES.get(name).fn(workdir, run),
                            "wall_s": round(time.perf_counter() - t0, 1)}
            atomic_write(path, json.dumps(cached, indent=1))
        out.update(cached[name]["values"])
        run = {**run, "wall_s": run["wall_s"] + cached[name]["wall_s"]}
    return {**out, "wall_s": run["wall_s"]}


def run_study(name: str, root: str, seeds: int, steps: int, extra: list[str]) -> dict:
    """One study, holding ``ROOT/<study>``'s lock: a second process on the same study
    (whose prepares would re-copy the workdirs the first is measuring) is refused."""
    with WorkdirLock(os.path.join(root, name), f"reproduce --study {name}"):
        return _run_study(name, root, seeds, steps, extra)


def _run_study(name: str, root: str, seeds: int, steps: int, extra: list[str]) -> dict:
    s = STUDIES.get(name).spec
    overrides = list(s.overrides) + list(extra) + ([f"train.steps={steps}"] if steps else [])
    out_dir = os.path.join(root, name)
    results, offsets = {}, {}
    spec = os.path.join(REPO, s.config)   # the repo's own config, from any working directory
    variants = sweep.load_sweep(spec, s.sweep, VARIANT_KEYS)
    for v in variants:
        runs = []
        for seed_overrides, workdir in sweep.seed_workdirs(out_dir, v["name"], seeds):
            print(f"== {name}/{v['name']} {' '.join(seed_overrides)}", flush=True)
            run_overrides = overrides + v["overrides"] + seed_overrides
            t0 = time.perf_counter()
            if v.get("prepare"):
                budget = int(config_lib.load(spec, run_overrides).train.steps)
                run_overrides += PREPARES.get(v["prepare"]).fn(spec, run_overrides,
                                                               out_dir, workdir)
                # a prepare that trains part of the budget (a warm start) shortens the run
                offsets[v["name"]] = budget - int(config_lib.load(spec, run_overrides).train.steps)
            run = run_once(spec, run_overrides, workdir, time.perf_counter() - t0)
            row = sweep.summarize(workdir)
            row.update(measure(s.measures, workdir, run))
            row["seed"] = seed_overrides[0].split("=")[1] if seed_overrides else "0"
            runs.append(row)
        results[v["name"]] = {"overrides": v["overrides"], **sweep.aggregate(runs),
                              "per_seed": runs}
    claims = [claim_result(c, results) for c in s.claims]
    doc = {"study": name, "title": s.title, "config": s.config, "sweep": s.sweep,
           "overrides": overrides, "seeds": seeds, "results": results, "claims": claims,
           "wall_s": sum(r["wall_s"] for v in results.values() for r in v["per_seed"])}
    atomic_write(os.path.join(out_dir, "results.json"), json.dumps(doc, indent=1))
    atomic_write(os.path.join(out_dir, "results.md"), render(doc))
    sweep.plot(out_dir, [v["name"] for v in variants], os.path.join(out_dir, PLOT), seeds,
               offsets)
    return doc


def claim_result(c: Claim, results: dict) -> dict:
    def values(variant):
        if variant not in results:
            raise KyxError(f"claim {c.text!r} names variant {variant!r}, not in the sweep "
                           f"({', '.join(results)})")
        return [r.get(c.metric) for r in results[variant]["per_seed"]]
    if c.target is not None:
        return {**dataclasses.asdict(c),
                **verdict.compare_to_target(values(c.variant), c.target, c.better)}
    return {**dataclasses.asdict(c),
            **verdict.compare(values(c.baseline), values(c.variant), c.better, c.binary)}


# ----------------------------------------------------------------------------- rendering
def _cell(r: dict, key: str, fmt: str) -> str:
    if r.get(key) is None:
        return "n/a"
    if r.get("n_seeds", 1) > 1 and r.get(key + "_std") is not None:
        return f"{fmt.format(r[key])} ± {fmt.replace('+', '').format(r[key + '_std'])}"
    return fmt.format(r[key])


def _num(x, fmt="{:+.4f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def render(doc: dict, image: str = PLOT) -> str:
    """The study's markdown from its results.json alone (``image``: the loss-curve PNG's
    path relative to the markdown file)."""
    s = STUDIES.get(doc["study"]).spec
    steps = next(iter(doc["results"].values()))["steps"]
    lines = [f"## {doc['title']}", "",
             f"`python experiments/reproduce.py --study {doc['study']}`: `{doc['config']}`, "
             f"sweep `{doc['sweep']}`, {steps:.0f} steps, {doc['seeds']} seeds per variant "
             f"(mean ± std, ddof 1); overrides `{' '.join(doc['overrides']) or 'none'}`; "
             f"wall time {doc['wall_s'] / 60:.1f} min on this machine.", "",
             "| variant | " + " | ".join(h for _, h, _ in s.columns) + " |",
             "|---|" + "---:|" * len(s.columns)]
    for name, r in doc["results"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(r, k, f) for k, _, f in s.columns) + " |")
    lines += ["", "| claim (paper) | metric: baseline → variant (or vs a level) | difference ± se "
                  "| p | verdict |",
              "|---|---|---:|---:|---|"]
    for c in doc["claims"]:
        p = "n/a" if c["p"] is None else f"{c['p']:.3f}"
        compared = (f"{c['variant']} vs {c['target']:g}" if c.get("target") is not None
                    else f"{c['baseline']} → {c['variant']}")
        lines.append(f"| {c['text']} ({c['source']}) | {c['metric']}: {compared} | "
                     f"{_num(c['diff'])} ± {_num(c['se'], '{:.4f}')} | {p} | "
                     f"**{c['verdict']}** |")
    lines += ["", f"![{doc['study']}: train CE and eval loss, mean of {doc['seeds']} seeds]"
                  f"({image})"]
    return "\n".join(lines) + "\n"


PAGE_HEAD = """# Reproduced effects at small scale

Written by `python experiments/reproduce.py --page docs/results.md` from each study's
results.json (run every study with `--all`). A verdict compares variant and baseline over
seeds with a two-sided test (Welch's t; Fisher's exact test for 0/1 outcomes such as
divergence; a one-sample t-test for a claimed level such as ExCP's 50x): **reproduced** (the
claimed sign, p < 0.05), **opposite** (the other sign, p < 0.05) or **not at this scale**
(inside the seed spread). Three seeds resolve only differences of a few standard errors;
"not at this scale" is not evidence against a paper. Each study's results.json is kept in
docs/results/ beside its loss-curve PNG, so the page gathers studies run in different
sessions. Wall times are as measured on this 2-core machine, training and measurements
included, usually one core per study with other jobs beside it: upper bounds.
"""


def page(root: str, out: str) -> str:
    """The summary page written to ``out``. Each study under ``root`` has its results.json
    and loss-curve PNG copied to ``<out's directory>/results/<study>.json|png``; a study not
    under ``root`` is taken from that copy, so a page built from separate sessions' runs
    keeps every study finished so far (its table says which run it came from)."""
    kept_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "results")
    docs = []
    for name in STUDIES.names():
        path, kept = os.path.join(root, name, "results.json"), os.path.join(kept_dir,
                                                                           f"{name}.json")
        if os.path.exists(path):
            doc = read_json(path)
            os.makedirs(kept_dir, exist_ok=True)
            atomic_write(kept, json.dumps(doc, indent=1))
            png = os.path.join(root, name, PLOT)
            if os.path.exists(png):
                shutil.copyfile(png, os.path.join(kept_dir, f"{name}.png"))
        elif os.path.exists(kept):
            doc = read_json(kept)
        else:
            continue
        docs.append(doc)
    lines = [PAGE_HEAD, "| study | runs | wall time (min) |", "|---|---:|---:|"]
    for d in docs:
        runs = sum(len(v["per_seed"]) for v in d["results"].values())
        lines.append(f"| {d['title']} | {runs} | {d['wall_s'] / 60:.1f} |")
    missing = [n for n in STUDIES.names() if n not in {d["study"] for d in docs}]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n\n" + "\n".join(
        render(d, f"results/{d['study']}.png") for d in docs)


def main(argv=None) -> int:
    spec, overrides, rest = config_lib.parse_cli(sys.argv[1:] if argv is None else argv)
    if spec is not None:
        raise SystemExit("reproduce.py takes no --config: each study names its own; "
                         "pass --config.a.b=v overrides only")
    parser = argparse.ArgumentParser(prog="experiments/reproduce.py")
    parser.add_argument("--study", action="append", default=[], choices=STUDIES.names())
    parser.add_argument("--all", action="store_true", help="every study, in order")
    parser.add_argument("--render", choices=STUDIES.names(),
                        help="print a study's table from its results.json")
    parser.add_argument("--page", help="write every finished study's table to this file")
    parser.add_argument("--root", default="runs/reproduce")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="override train.steps")
    args = parser.parse_args(rest)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    names = list(STUDIES.names()) if args.all else args.study
    if not (names or args.render or args.page):
        parser.error("give --study NAME, --all, --render NAME or --page FILE")
    if names:   # seeds of a variant, and re-runs, load its compiled programs from disk
        enable_compilation_cache()
    for name in names:
        try:
            doc = run_study(name, args.root, args.seeds, args.steps, overrides)
        except KyxError as e:    # a user's mistake or a damaged file: its message, no traceback
            raise SystemExit(f"experiments/reproduce.py --study {name}: {e}") from e
        print(render(doc), flush=True)
    if args.render:
        path = os.path.join(args.root, args.render, "results.json")
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist: run --study {args.render} first")
        print(render(read_json(path)), end="")
    if args.page:
        atomic_write(args.page, page(args.root, args.page))
        print(f"wrote {args.page}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
