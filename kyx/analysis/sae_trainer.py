"""Sparse autoencoder on a trained model's activations (docs/analysis.md):

    kyx train --config configs/sae.py:tiny --workdir runs/sae \\
        --config.sae.model_workdir=runs/tiny --config.sae.site=blocks.1.resid

The activations of ``sae.site`` (kyx/analysis/sites.py names) come from an activation
buffer (kyx/analysis/activation_buffer.py): ``sae.buffer`` if set, else one harvested
once from the model's own corpus into the data cache (``data_dir/activations/<key>``,
keyed by the model workdir, its step, the site and the harvest settings, so a sweep over
k or λ reads one harvest). The SAE (kyx/analysis/sae.py; ``sae.kind`` = topk | relu) is
initialised from a sample of the buffer (b_pre = geometric median, encoder scaled to unit
reconstructions; mse_scale = 1 / variance) and trained with Adam; after each step the
decoder rows are renormalised (their parallel gradient component having been projected
out before the optimizer), and per-latent counters of tokens since the latent last fired
(``TrainState.stats``, checkpointed) decide which latents are dead for the AuxK loss.

Metrics: train/ l0, nmse, explained_variance, dead_fraction and the loss terms; eval/ the
same on the buffer's held-out split (plus the fraction of latents that never fired on
it); at the end, with ``sae.lm_eval.batches`` > 0, the LM-side metrics of the SAE
spliced into the model (kyx/analysis/sae_eval.py): loss recovered against zero- and
mean-ablation and the delta LM loss. The trained model is named ``sae``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kyx import axes as ax
from kyx.analysis import sae, sae_eval, sae_step
from kyx.errors import ConfigError
from kyx.logs import get_logger
from kyx.train import defaults, optim
from kyx.train.base import StepSpec, Trainer
from kyx.train.state import ModelSpec, model_init_key
from kyx.train.step import apply_update

log = get_logger(__name__)
NAME = "sae"
KINDS = sae.ACTIVATIONS  # the sae.kind choices (kyx/train/validation.py)
BATCH_AXES = {"x_nd": (ax.ACT_BATCH, ax.ACT_EMBED)}


def default_config() -> ml_collections.ConfigDict:
    cfg = defaults.base_config()
    cfg.trainer = "sae"
    cfg.sae = ml_collections.ConfigDict({
        "model_workdir": "",       # the kyx workdir (or HF directory) whose activations to fit
        "step": -1,                # its checkpoint (-1: newest)
        "site": "blocks.0.resid",  # kyx/analysis/sites.py: embed, blocks.N.{resid,attn_out,mlp_out}
        "kind": "topk",            # topk (Gao et al. 2024) | relu (Anthropic, L1)
        "n_latents": 4096,
        "k": 32,                   # topk: active latents per token
        "k_aux": 256,              # topk: dead latents in the AuxK loss
        "aux_coef": 1 / 32,        # topk: AuxK weight
        "l1": 5.0,                 # relu: λ
        "dead_tokens": 10_000_000,  # dead after this many tokens without an activation > 1e-3
        "init_sample": 32768,      # activations for b_pre (geometric median) and mse_scale
        "buffer": "",              # an activation buffer directory; "": harvested (cached)
        "harvest": ml_collections.ConfigDict({
            "tokens": 2_000_000, "batch_size": 16, "seq_len": 128, "val_fraction": 0.05}),
        "lm_eval": ml_collections.ConfigDict({"batches": 8}),  # 0: no LM-side metrics
    })
    cfg.data = ml_collections.ConfigDict({
        "batch_size": 4096,        # activations (tokens) per step
        "seed": 0,
        "eval_batches": 8,         # batches of the held-out split per evaluation
        "data_dir": "",            # harvest cache root ('' = $KYX_DATA_DIR or ~/.cache/kyx/data)
    })
    # Gao et al.: Adam, lr 1e-4, eps 6.25e-10, no weight decay, no clipping
    cfg.optim.update(lr=1e-4, eps=6.25e-10, b2=0.999, weight_decay=0.0, clip_norm=0.0,
                     schedule="constant", warmup_steps=0)
    return cfg


def check(cfg) -> None:
    """The ``sae`` section's own rules (after its field checks): a model to read, k within
    the latents, one micro-batch."""
    if not cfg.sae.model_workdir:
        raise ConfigError("sae.model_workdir is empty: name the kyx workdir (or Hugging Face "
                          "directory) whose activations the SAE is trained on")
    if not os.path.exists(os.path.join(cfg.sae.model_workdir, "config.json")):
        raise ConfigError(f"sae.model_workdir = {cfg.sae.model_workdir!r} is not a kyx workdir "
                          "or Hugging Face model directory (no config.json)")
    sae.SaeConfig.from_config(cfg.sae, d=1)
    from kyx.analysis import sites
    from kyx.interop import sources
    sites.parse_site(cfg.sae.site, sources.model_config(cfg.sae.model_workdir))
    if cfg.optim.grad_accum != 1:
        raise ConfigError("optim.grad_accum must be 1 for the sae trainer (the dead-latent "
                          "counters advance once per step)")


def model_width(cfg) -> int:
    from kyx.interop import sources
    return sources.model_config(cfg.sae.model_workdir).d_model


def sae_config(cfg) -> sae.SaeConfig:
    return sae.SaeConfig.from_config(cfg.sae, model_width(cfg))


def initial_stats(n_latents: int, mse_scale: float = 1.0) -> dict:
    """TrainState.stats: tokens since each latent last fired, and the TopK MSE scale."""
    return {"tokens_since_fired_l": np.zeros((n_latents,), np.float32),
            "mse_scale": np.float32(mse_scale)}


def make_step(scfg: sae.SaeConfig, tx, schedule, tokens: int):
    """``step(state, batch, rng)``: one guarded Adam update of the SAE on ``x_nd``, then
    the decoder renormalised and the dead-latent counters advanced."""
    def step(state, batch, rng):
        del rng  # deterministic
        model = state.models[NAME]
        since_l = state.stats["tokens_since_fired_l"]
        (loss, metrics), grads = sae_step.loss_and_grads(
            model.params, batch["x_nd"], since_l, state.stats["mse_scale"], scfg)
        new, update_metrics = apply_update(model, grads, loss, tx)
        params, since_l, metrics = sae_step.after_update(new.params, since_l, metrics,
                                                         tokens, scfg)
        stats = {**state.stats, "tokens_since_fired_l": since_l}
        out = {**metrics, "loss": loss, **update_metrics, "lr": schedule(state.step)}
        return state.replace(step=state.step + 1, stats=stats,
                             models={**state.models, NAME: new.replace(params=params)}), out
    return step


def build_step(cfg, init=None, mse_scale: float = 1.0) -> StepSpec:
    scfg = sae_config(cfg)
    base_tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    tx = sae_step.optimizer(base_tx)
    models = {NAME: ModelSpec(sae.SaeParams(scfg), tx, init)}
    return StepSpec(models, make_step(scfg, tx, schedule, cfg.data.batch_size),
                    initial_stats(scfg.n_latents, mse_scale))


# ----------------------------------------------------------------------------- eval

def make_eval_fn(scfg: sae.SaeConfig):
    def eval_fn(params, batch):
        x_nd = batch["x_nd"]
        _, z_nl, xhat_nd = sae.forward(params[NAME], x_nd, scfg)
        return {"err": jnp.sum((xhat_nd - x_nd) ** 2), "sq": jnp.sum(x_nd ** 2),
                "sum_d": jnp.sum(x_nd, axis=0), "n": jnp.float32(x_nd.shape[0]),
                "active": jnp.sum(z_nl > 0).astype(jnp.float32),
                "fired_l": jnp.sum(z_nl > sae.FIRED, axis=0).astype(jnp.float32)}
    return eval_fn


def summarize_eval(sums):
    """NMSE = Σ‖x̂ − x‖² / Σ‖x‖²; explained variance = 1 − Σ‖x̂ − x‖² / Σ‖x − x̄‖² over
    the whole held-out set (x̄ its mean); L0; latents that never fired on it."""
    n = float(sums["n"])
    err, sq = float(sums["err"]), float(sums["sq"])
    centred = sq - float(np.sum(np.asarray(sums["sum_d"], np.float64) ** 2)) / n
    return {"eval/nmse": err / sq, "eval/explained_variance": 1.0 - err / centred,
            "eval/mse": err / (n * len(sums["sum_d"])), "eval/l0": float(sums["active"]) / n,
            "eval/unfired_fraction": float(np.mean(np.asarray(sums["fired_l"]) == 0)),
            "eval/tokens": n}, {}


# ----------------------------------------------------------------------------- data

def model_step(cfg) -> int:
    """The model checkpoint the activations come from (``sae.step``, -1: the newest)."""
    from kyx.checkpoint.workdir import checkpoint_steps
    from kyx.interop import hf_dir
    if cfg.sae.step >= 0 or hf_dir.is_hf_dir(cfg.sae.model_workdir):
        return int(cfg.sae.step)
    steps = checkpoint_steps(cfg.sae.model_workdir)
    if not steps:
        raise ConfigError(f"sae.model_workdir = {cfg.sae.model_workdir!r} has no checkpoint")
    return max(steps)


def buffer_path(cfg) -> str:
    """``sae.buffer``, else the harvest's cache directory for this model, step, site and
    harvest settings."""
    if cfg.sae.buffer:
        return cfg.sae.buffer
    from kyx.data.corpus import default_data_dir
    key = json.dumps([os.path.abspath(cfg.sae.model_workdir), model_step(cfg), cfg.sae.site,
                      cfg.sae.harvest.to_dict()], sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    return os.path.join(cfg.data.data_dir or default_data_dir(), "activations", name)


def open_buffer(cfg):
    """The activation buffer of the run, harvested first when it does not exist yet."""
    from kyx.analysis import activation_buffer as ab
    from kyx.analysis.harvest import harvest
    path = buffer_path(cfg)
    if not ab.exists(path):
        if cfg.sae.buffer:
            raise ConfigError(f"sae.buffer = {path!r} holds no activation buffer (no "
                              "meta.json); leave sae.buffer empty to harvest one")
        h = cfg.sae.harvest
        log.info("harvesting %d activations of %s from %s into %s", h.tokens, cfg.sae.site,
                 cfg.sae.model_workdir, path)
        return harvest(cfg.sae.model_workdir, cfg.sae.site, path, tokens=h.tokens,
                          batch_size=h.batch_size, seq_len=h.seq_len, step=model_step(cfg),
                          val_fraction=h.val_fraction)
    return ab.ActivationBuffer(path)


def _check_buffer(cfg, buf, d: int) -> None:
    meta = buf.meta
    if int(buf.d) != d:
        raise ConfigError(f"the activation buffer {buffer_path(cfg)} has width {buf.d}, the "
                          f"model {cfg.sae.model_workdir} d_model = {d}")
    if meta.get("site") not in (None, cfg.sae.site):
        raise ConfigError(f"the activation buffer {buffer_path(cfg)} holds site "
                          f"{meta.get('site')!r}, not sae.site = {cfg.sae.site!r}")


# ----------------------------------------------------------------------------- build

def build(cfg) -> Trainer:
    scfg = sae_config(cfg)  # config errors before any data work
    buf = open_buffer(cfg)
    _check_buffer(cfg, buf, scfg.d)
    sample = buf.sample(min(cfg.sae.init_sample, buf.num_rows), seed=cfg.data.seed)
    key = model_init_key(cfg.train.seed, 0)
    step = build_step(cfg, init=lambda: sae.init_params(scfg, sample, key),
                      mse_scale=sae.mse_scale(sample))
    bs = cfg.data.batch_size
    evals = {}
    if "val" in buf.meta.get("splits", {}) and cfg.data.eval_batches > 0:
        evals = dict(eval_fn=make_eval_fn(scfg), summarize_eval=summarize_eval,
                     eval_batches=lambda: itertools.islice(
                         buf.batches(bs, seed=cfg.data.seed, split="val"),
                         cfg.data.eval_batches))
    else:
        log.warning("sae: the buffer %s has no held-out split: no evaluation", buf.path)
    hooks = []
    if cfg.sae.lm_eval.batches > 0:
        hooks.append(sae_eval.lm_eval_hook(cfg, scfg, NAME, model_step(cfg)))
    return Trainer(
        config=cfg, models=step.models, step_fn=step.fn,
        train_iter=buf.batches(bs, seed=cfg.data.seed, split="train"), batch_axes=BATCH_AXES,
        tokens_per_step=bs, flops_per_token=12.0 * scfg.d * scfg.n_latents,
        hooks=hooks, stats=step.stats, batch_rows=bs, **evals)
