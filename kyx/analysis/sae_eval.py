"""What an SAE costs the language model: its reconstruction spliced into the forward pass
at its site (kyx/analysis/sites.py), against the clean model and zero / mean ablation of
that activation (../shared/ALGORITHMS.md §10a):

* ce_clean, ce_sae, ce_zero, ce_mean: next-token cross-entropy (nats per target token)
  with the site's activation untouched, replaced by x̂, by 0, by its mean over the same
  tokens (a first, clean pass measures the mean);
* loss_recovered_{zero,mean} = (ce_ablate − ce_sae) / (ce_ablate − ce_clean);
* delta_lm_loss = ce_sae − ce_clean (reported with them: loss recovered depends on the
  ablation baseline, and zero ablation of a residual stream is a very weak baseline).
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding
from kyx.analysis import sae, sites
from kyx.logs import get_logger
from kyx.objectives.lm import token_cross_entropy

log = get_logger(__name__)


def _inputs(batch: dict) -> tuple:
    tokens = jnp.asarray(batch["tokens"], jnp.int32)
    seg = jnp.asarray(batch["segment_ids"], jnp.int32) if "segment_ids" in batch else None
    pos = jnp.asarray(batch["positions"], jnp.int32) if "positions" in batch else None
    return tokens, seg, pos


def _ce_sums(logits_btv, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(Σ masked token CE, Σ mask) of next-token targets (``targets`` / ``loss_mask`` of a
    pipeline batch; else the row's next tokens)."""
    if "targets" in batch:
        targets, mask = batch["targets"], batch["loss_mask"]
    else:
        tokens = batch["tokens"]
        targets = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
        mask = jnp.ones(tokens.shape, jnp.float32).at[:, -1].set(0.0)
    ce_bt, _ = token_cross_entropy(logits_btv.astype(jnp.float32), jnp.asarray(targets))
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(ce_bt * mask), jnp.sum(mask)


def lm_metrics(loaded_model, sae_params, sae_cfg: sae.SaeConfig, batches: Iterable[dict],
               site: str) -> dict:
    """LM-side metrics of ``sae_params`` at ``site`` over ``batches`` (dicts with
    ``tokens`` [B, T] and optionally ``segment_ids``, ``positions``, ``targets``,
    ``loss_mask``). ``loaded_model``: anything with ``.model`` (a Decoder) and ``.params``
    (kyx.load's LoadedModel)."""
    module, params = loaded_model.model, loaded_model.params
    where = sites.parse_site(site, module.cfg)
    batches = list(batches)

    @jax.jit
    def clean(params, batch):
        tokens, seg, pos = _inputs(batch)
        logits, act_btd = sites.run(module, params, tokens, seg, pos, site=where)
        real = (seg if seg is not None else jnp.ones_like(tokens)) > 0
        act = act_btd.astype(jnp.float32) * real[..., None]
        return _ce_sums(logits, batch), (jnp.sum(act, axis=(0, 1)), jnp.sum(real))

    @jax.jit
    def edited(params, sae_params, mean_d, batch):
        tokens, seg, pos = _inputs(batch)
        edits = {"sae": lambda a: sae.reconstruct(sae_params, a, sae_cfg),
                 "zero": jnp.zeros_like,
                 "mean": lambda a: jnp.broadcast_to(mean_d.astype(a.dtype), a.shape)}
        return {name: _ce_sums(sites.run(module, params, tokens, seg, pos, site=where,
                                         edit=fn)[0], batch)
                for name, fn in edits.items()}

    sums = {k: np.zeros(2) for k in ("clean", "sae", "zero", "mean")}
    act_sum, n_act = 0.0, 0.0
    for batch in batches:
        (ce, n), (a, m) = clean(params, batch)
        sums["clean"] += (float(ce), float(n))
        act_sum, n_act = act_sum + np.asarray(a, np.float64), n_act + float(m)
    mean_d = jnp.asarray(act_sum / max(n_act, 1.0), jnp.float32)
    for batch in batches:
        for name, (ce, n) in edited(params, sae_params, mean_d, batch).items():
            sums[name] += (float(ce), float(n))
    ce = {k: v[0] / max(v[1], 1.0) for k, v in sums.items()}
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
            "ce_mean": ce["mean"],
            "loss_recovered_zero": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
            "loss_recovered_mean": (ce["mean"] - ce["sae"]) / (ce["mean"] - ce["clean"]),
            "delta_lm_loss": ce["sae"] - ce["clean"]}


def run_lm_metrics(model_workdir: str, step: int, site: str, sae_params,
                   sae_cfg: sae.SaeConfig, *, batches: int, batch_size: int,
                   seq_len: int) -> dict:
    """``lm_metrics`` over ``batches`` batches of the model's own validation pass (its
    data config and tokenizer; kyx/analysis/harvest.py), {} for a source without one."""
    import itertools

    import kyx
    from kyx.analysis.harvest import model_batches

    loaded = kyx.load(model_workdir, step)
    if loaded.from_hf:
        log.warning("sae: no LM evaluation (%s has no kyx data config)", model_workdir)
        return {}
    data = list(itertools.islice(model_batches(loaded, "validation", batch_size, seq_len),
                                 batches))
    # kyx.load places the model on one device: its constraints must not see a run's mesh
    with sharding.use_mesh(sharding.single_device_mesh(), "dp"):
        return lm_metrics(loaded, jax.device_get(sae_params), sae_cfg, data, site)


def lm_eval_hook(cfg, sae_cfg: sae.SaeConfig, name: str, step: int):
    """The ``sae`` trainer's hook: after the last step, ``run_lm_metrics`` of the trained
    SAE (model ``name`` of the state) as ``eval/lm/<metric>`` in the final row."""
    from kyx.train.hooks import eval_hook

    def evaluate(run) -> dict:
        h = cfg.sae.harvest
        out = run_lm_metrics(cfg.sae.model_workdir, step, cfg.sae.site,
                             run.state.params(name), sae_cfg, batches=cfg.sae.lm_eval.batches,
                             batch_size=h.batch_size, seq_len=h.seq_len)
        return {f"eval/lm/{k}": float(v) for k, v in out.items()}
    return eval_hook(evaluate, every=0, name="lm_eval")
