"""Preference objectives (ALGORITHMS §9): Bradley–Terry reward model, DPO family, KTO, NPO.

Pure functions on per-example arrays, float32, returning ``(loss, metrics)``. Inputs are
summed response log-probs ``logps_*_b`` (s(y) = Σ_t log π(y_t | x, y_<t) over response
tokens), token counts ``n_*_b`` where a loss length-normalises, and optional example
weights ``w_b`` (0 for padding rows; means are weighted). With Δ = [s_θ(y_w) − s_ref(y_w)]
− [s_θ(y_l) − s_ref(y_l)]:

* DPO: −log σ(βΔ); cDPO (label smoothing ε): −(1−ε) log σ(βΔ) − ε log σ(−βΔ).
* IPO: (Δ̄ − 1/(2τ))² with length-averaged log-probs (as TRL).
* SimPO: −log σ(β (s̄_θ(y_w) − s̄_θ(y_l)) − γ), γ = β · gamma_ratio (reference-free).
* ORPO: NLL(y_w) + λ · −log σ(log odds(y_w) − log odds(y_l)), odds from mean log-probs.
* KTO: r = s_θ − s_ref, z0 = max(0, mean over mismatched pairs of s_θ − s_ref), detached;
  desirable λ_D (1 − σ(β(r − z0))), undesirable λ_U (1 − σ(β(z0 − r))).
* NPO: (2/β) · softplus(β (s_θ(y_l) − s_ref(y_l))) on the rejected response.
* Bradley–Terry: −log σ(r_c − r_r − m), m from Llama 2's margin table by strength.

``PREFERENCE_LOSSES`` maps ``loss.name`` to an entry ``fn(cfg, pol, ref, batch)`` with
metadata ``needs_reference`` (the DPO trainer keeps a reference only when it is true),
``records`` (``"preference"`` pairs or ``"feedback"`` KTO records: what the data pipeline
builds) and ``defaults`` (the loss's own config fields). Adding a loss is one function
plus its ``@PREFERENCE_LOSSES.register(...)`` line in this file (docs/architecture.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kyx.errors import ConfigError
from kyx.objectives.sft import log1m_exp
from kyx.registry import Registry

RECORD_KINDS = ("preference", "feedback")
PREFERENCE_LOSSES = Registry("loss.name", needs_reference=True, records="preference",
                             defaults={})
# Llama 2 margins by preference strength 0..3 (negligible/unsure, slightly, better, significantly)
LLAMA2_MARGINS = {"none": (0.0, 0.0, 0.0, 0.0), "small": (0.0, 1 / 3, 2 / 3, 1.0),
                  "large": (0.0, 1.0, 2.0, 3.0)}


def default_config() -> ml_collections.ConfigDict:
    """Shared fields, plus every registered loss's own ``defaults``."""
    cfg = {
        "name": "dpo",               # a name in PREFERENCE_LOSSES
        "beta": 0.1,                 # DPO / KTO / NPO β; IPO τ
        "label_smoothing": 0.0,      # cDPO ε
        "nll_coef": 0.0,             # Llama 3: 0.2 · per-token NLL of the chosen response
        "mask_format_tokens": False,  # Llama 3: drop header / end-of-turn tokens from s(y)
    }
    for entry in PREFERENCE_LOSSES.entries():
        for key, value in entry.defaults.items():
            if key in cfg and cfg[key] != value:
                raise ValueError(f"loss {entry.name!r} redefines the default of {key!r}")
            cfg[key] = value
    return ml_collections.ConfigDict(cfg)


def check_config(cfg) -> None:
    PREFERENCE_LOSSES.get(cfg.name)
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ConfigError(f"loss.label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.beta <= 0 or cfg.simpo_beta <= 0:
        raise ConfigError("loss.beta and loss.simpo_beta must be > 0")


def _mean(x_b, w_b):
    w = jnp.ones_like(x_b) if w_b is None else w_b.astype(jnp.float32)
    return jnp.sum(x_b * w) / jnp.maximum(jnp.sum(w), 1e-9)


def _reward_metrics(chosen_b, rejected_b, w_b):
    return {"rewards/chosen": _mean(chosen_b, w_b), "rewards/rejected": _mean(rejected_b, w_b),
            "rewards/margin": _mean(chosen_b - rejected_b, w_b),
            "rewards/accuracy": _mean((chosen_b > rejected_b).astype(jnp.float32), w_b)}


def bradley_terry(r_chosen_b, r_rejected_b, margin_b=None, w_b=None):
    """Reward-model loss −log σ(r_c − r_r − m); metrics accuracy and mean margin r_c − r_r."""
    m = 0.0 if margin_b is None else margin_b
    loss = _mean(-jax.nn.log_sigmoid(r_chosen_b - r_rejected_b - m), w_b)
    return loss, {"loss": loss, "accuracy": _mean((r_chosen_b > r_rejected_b).astype(
        jnp.float32), w_b), "margin": _mean(r_chosen_b - r_rejected_b, w_b)}


def strength_margin(strength_b, table: str = "none"):
    """Llama 2 margin per example from strength 0..3 (−1, no strength: margin 0)."""
    if table not in LLAMA2_MARGINS:
        raise ConfigError(f"margin table must be one of {sorted(LLAMA2_MARGINS)}, got {table!r}")
    values = jnp.asarray(LLAMA2_MARGINS[table], jnp.float32)
    return jnp.where(strength_b >= 0, values[jnp.clip(strength_b, 0, 3)], 0.0)


def dpo(logps_c_b, logps_r_b, ref_c_b, ref_r_b, beta=0.1, label_smoothing=0.0, w_b=None):
    chosen, rejected = beta * (logps_c_b - ref_c_b), beta * (logps_r_b - ref_r_b)
    z = chosen - rejected  # β Δ
    per = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
           - label_smoothing * jax.nn.log_sigmoid(-z))
    loss = _mean(per, w_b)
    return loss, {"loss": loss, **_reward_metrics(chosen, rejected, w_b)}


def ipo(logps_c_b, logps_r_b, ref_c_b, ref_r_b, n_c_b, n_r_b, tau=0.1, w_b=None):
    nc, nr = jnp.maximum(n_c_b, 1.0), jnp.maximum(n_r_b, 1.0)
    chosen, rejected = (logps_c_b - ref_c_b) / nc, (logps_r_b - ref_r_b) / nr
    loss = _mean(jnp.square(chosen - rejected - 1.0 / (2.0 * tau)), w_b)
    return loss, {"loss": loss, **_reward_metrics(chosen, rejected, w_b)}


def simpo(logps_c_b, logps_r_b, n_c_b, n_r_b, beta=2.0, gamma_ratio=0.25, w_b=None):
    chosen = beta * logps_c_b / jnp.maximum(n_c_b, 1.0)
    rejected = beta * logps_r_b / jnp.maximum(n_r_b, 1.0)
    loss = _mean(-jax.nn.log_sigmoid(chosen - rejected - beta * gamma_ratio), w_b)
    return loss, {"loss": loss, **_reward_metrics(chosen, rejected, w_b)}


def nll(logps_b, n_b, w_b=None):
    """Per-token negative log-likelihood over the batch: −Σ s(y) / Σ |y|."""
    w = jnp.ones_like(logps_b) if w_b is None else w_b.astype(jnp.float32)
    return -jnp.sum(logps_b * w) / jnp.maximum(jnp.sum(n_b * w), 1.0)


def orpo(logps_c_b, logps_r_b, n_c_b, n_r_b, lam=0.1, w_b=None):
    mean_c, mean_r = logps_c_b / jnp.maximum(n_c_b, 1.0), logps_r_b / jnp.maximum(n_r_b, 1.0)
    log_odds = (mean_c - log1m_exp(mean_c)) - (mean_r - log1m_exp(mean_r))
    ratio = _mean(-jax.nn.log_sigmoid(log_odds), w_b)
    nll_c = nll(logps_c_b, n_c_b, w_b)
    loss = nll_c + lam * ratio
    return loss, {"loss": loss, "orpo/nll": nll_c, "orpo/log_odds_ratio": _mean(log_odds, w_b),
                  **_reward_metrics(lam * mean_c, lam * mean_r, w_b)}


def kto(logps_b, ref_b, kl_logps_b, kl_ref_b, desirable_b, beta=0.1, w_desirable=1.0,
        w_undesirable=1.0, w_b=None):
    r = logps_b - ref_b
    z0 = jax.lax.stop_gradient(jnp.maximum(_mean(kl_logps_b - kl_ref_b, w_b), 0.0))
    good = desirable_b.astype(bool)
    per = jnp.where(good, w_desirable * (1.0 - jax.nn.sigmoid(beta * (r - z0))),
                    w_undesirable * (1.0 - jax.nn.sigmoid(beta * (z0 - r))))
    loss = _mean(per, w_b)
    w = jnp.ones_like(r) if w_b is None else w_b
    gw, bw = w * good, w * (~good)
    return loss, {"loss": loss, "kto/z0": z0,
                  "rewards/desirable": jnp.sum(beta * r * gw) / jnp.maximum(jnp.sum(gw), 1.0),
                  "rewards/undesirable": jnp.sum(beta * r * bw) / jnp.maximum(jnp.sum(bw), 1.0)}


def npo(logps_r_b, ref_r_b, beta=0.1, w_b=None):
    loss = _mean((2.0 / beta) * jax.nn.softplus(beta * (logps_r_b - ref_r_b)), w_b)
    return loss, {"loss": loss, "rewards/rejected": _mean(beta * (logps_r_b - ref_r_b), w_b)}


# ----------------------------------------------------------------------------- registry
# entry(cfg, pol, ref, batch) -> (loss, metrics). ``pol`` / ``ref``: summed log-probs per
# sequence name under the loss mask (kyx/train/logprobs.py); ``pol`` also has token counts
# ``n_<name>``; ``batch`` has ``weight`` (and ``label`` for feedback records).

@PREFERENCE_LOSSES.register("dpo")
def _dpo_entry(cfg, pol, ref, batch):
    return dpo(pol["chosen"], pol["rejected"], ref["chosen"], ref["rejected"], cfg.beta,
               cfg.label_smoothing, batch.get("weight"))


@PREFERENCE_LOSSES.register("ipo")
def _ipo_entry(cfg, pol, ref, batch):
    return ipo(pol["chosen"], pol["rejected"], ref["chosen"], ref["rejected"],
               pol["n_chosen"], pol["n_rejected"], cfg.beta, batch.get("weight"))


@PREFERENCE_LOSSES.register("simpo", needs_reference=False,
                            defaults={"simpo_beta": 2.0, "simpo_gamma_ratio": 0.25})
def _simpo_entry(cfg, pol, ref, batch):
    # γ/β = 0.25 is SimPO's config default (0.5 in the Llama-3-8B recipe)
    return simpo(pol["chosen"], pol["rejected"], pol["n_chosen"], pol["n_rejected"],
                 cfg.simpo_beta, cfg.simpo_gamma_ratio, batch.get("weight"))


@PREFERENCE_LOSSES.register("kto", records="feedback",
                            defaults={"kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.0})
def _kto_entry(cfg, pol, ref, batch):
    return kto(pol["response"], ref["response"], pol["kl"], ref["kl"], batch["label"], cfg.beta,
               cfg.kto_desirable_weight, cfg.kto_undesirable_weight, batch.get("weight"))


@PREFERENCE_LOSSES.register("orpo", needs_reference=False, defaults={"orpo_lambda": 0.1})
def _orpo_entry(cfg, pol, ref, batch):
    return orpo(pol["chosen"], pol["rejected"], pol["n_chosen"], pol["n_rejected"],
                cfg.orpo_lambda, batch.get("weight"))


@PREFERENCE_LOSSES.register("npo")
def _npo_entry(cfg, pol, ref, batch):
    return npo(pol["rejected"], ref["rejected"], cfg.beta, batch.get("weight"))


def preference_loss(cfg, pol: dict, ref: dict | None, batch):
    """The configured loss (``cfg.name``) plus, on pair records, Llama 3's
    ``nll_coef`` · per-token NLL of the chosen response (``pol["nll_chosen"]`` /
    ``pol["nll_n_chosen"]``: over all response tokens)."""
    entry = PREFERENCE_LOSSES.get(cfg.name)
    loss, m = entry.fn(cfg, pol, ref, batch)
    if cfg.nll_coef and entry.records == "preference":
        extra = nll(pol["nll_chosen"], pol["nll_n_chosen"], batch.get("weight"))
        loss = loss + cfg.nll_coef * extra
        m = {**m, "nll_chosen": extra}
    return loss, {**m, "loss": loss}
