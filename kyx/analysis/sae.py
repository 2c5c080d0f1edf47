"""Sparse autoencoders on model activations: parameters, forward pass, initialisation and
the decoder's unit-norm constraint, as pure functions on arrays (../shared/ALGORITHMS.md
§10a; losses in sae_losses.py, training in sae_trainer.py).

Both kinds share one parameter tree and one affine form::

    pre_nl = (x_nd − b_dec_d) @ w_enc_dl + b_enc_l
    z_nl   = activation(pre_nl)               # registered per kind (ACTIVATIONS)
    x̂_nd   = z_nl @ w_dec_ld + b_dec_d

* ``topk`` (Gao et al. 2024): z = ReLU(TopK_k(pre)); b_dec is their b_pre, b_enc their
  b_lat.
* ``relu`` (Anthropic, "Towards Monosemanticity"): z = ReLU(pre).

Row i of ``w_dec_ld`` is the decoder column W_dec[:, i] of the papers (a latent's
direction). The latents axis carries the logical name ``latents`` (kyx/axes.py), which
the fsdp / fsdp_tp / ep rule presets split over the mesh; d stays whole (it is the small
side: n_latents is d times the expansion factor).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kyx import axes as ax
from kyx import sharding
from kyx.analysis.geometric_median import geometric_median
from kyx.errors import ConfigError
from kyx.registry import Registry

FIRED = 1e-3  # a latent fired on a token when its activation exceeds this (Gao et al.)

# sae.kind -> activation(pre_nl, cfg) -> z_nl
ACTIVATIONS = Registry("sae.kind")


@dataclasses.dataclass(frozen=True)
class SaeConfig:
    """Shape and hyper-parameters of one SAE (the ``sae`` config section plus d)."""
    d: int                        # activation width (the site's d_model)
    n_latents: int
    kind: str = "topk"            # a name in ACTIVATIONS / sae_losses.LOSSES
    k: int = 32                   # topk: active latents per token
    k_aux: int = 256              # topk: dead latents the AuxK loss reconstructs with
    aux_coef: float = 1 / 32      # topk: weight of the AuxK loss
    l1: float = 5.0               # relu: λ of the decoder-norm-weighted L1
    dead_tokens: int = 10_000_000  # a latent is dead after this many tokens without firing

    @classmethod
    def from_config(cls, sae_cfg, d: int) -> "SaeConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"d"}
        cfg = cls(d=int(d), **{k: sae_cfg[k] for k in names if k in sae_cfg})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ACTIVATIONS.get(self.kind)  # unknown kind: ConfigError naming the choices
        if self.d < 1 or self.n_latents < 1:
            raise ConfigError(f"sae: d = {self.d} and sae.n_latents = {self.n_latents} must "
                              "be >= 1")
        if self.kind == "topk" and not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"sae.k = {self.k} must be in [1, sae.n_latents = "
                              f"{self.n_latents}]")


class SaeParams(nn.Module):
    """The SAE's parameters with their logical axes; calling it returns the param dict
    (the math is in the pure functions below, so the loop's abstract init, which calls
    every module with a dummy token batch, works unchanged)."""
    cfg: SaeConfig

    @nn.compact
    def __call__(self, *_unused):
        d, n = self.cfg.d, self.cfg.n_latents
        bound = 1.0 / np.sqrt(d)
        uniform = lambda k, s, t=jnp.float32: jax.random.uniform(k, s, t, -bound, bound)  # noqa: E731
        part = nn.with_logical_partitioning
        return {
            "w_enc_dl": self.param("w_enc_dl", part(uniform, (None, ax.LATENTS)), (d, n)),
            "b_enc_l": self.param("b_enc_l", part(nn.initializers.zeros, (ax.LATENTS,)), (n,)),
            "w_dec_ld": self.param("w_dec_ld", part(uniform, (ax.LATENTS, None)), (n, d)),
            "b_dec_d": self.param("b_dec_d", part(nn.initializers.zeros, (None,)), (d,)),
        }


# ----------------------------------------------------------------------------- forward

@ACTIVATIONS.register("topk")
def topk_activation(pre_nl: jax.Array, cfg: SaeConfig) -> jax.Array:
    """ReLU of the k largest pre-activations of each row, zero elsewhere."""
    return jax.nn.relu(pre_nl) * topk_mask(pre_nl, cfg.k)


@ACTIVATIONS.register("relu")
def relu_activation(pre_nl: jax.Array, cfg: SaeConfig) -> jax.Array:
    return jax.nn.relu(pre_nl)


def topk_mask(v_nl: jax.Array, k: int) -> jax.Array:
    """1 at the k largest entries of each row (lax.top_k's choice on ties), else 0; no
    gradient flows through the choice."""
    _, idx_nk = jax.lax.top_k(jax.lax.stop_gradient(v_nl), k)
    rows = jnp.arange(v_nl.shape[0])[:, None]
    return jnp.zeros(v_nl.shape, v_nl.dtype).at[rows, idx_nk].set(1)


def pre_activations(params, x_nd: jax.Array) -> jax.Array:
    pre_nl = (x_nd - params["b_dec_d"]) @ params["w_enc_dl"] + params["b_enc_l"]
    return sharding.constrain(pre_nl, (ax.ACT_BATCH, ax.ACT_LATENTS))


def decode(params, z_nl: jax.Array) -> jax.Array:
    return z_nl @ params["w_dec_ld"] + params["b_dec_d"]


def forward(params, x_nd: jax.Array, cfg: SaeConfig):
    """(pre_nl, z_nl, x̂_nd) of a batch of activations."""
    pre_nl = pre_activations(params, x_nd)
    z_nl = ACTIVATIONS.get(cfg.kind).fn(pre_nl, cfg)
    return pre_nl, z_nl, decode(params, z_nl)


def reconstruct(params, x_btd: jax.Array, cfg: SaeConfig) -> jax.Array:
    """x̂ of activations of any leading shape (e.g. [B, T, d], to splice into a model)."""
    x_nd = x_btd.reshape(-1, x_btd.shape[-1])
    return forward(params, x_nd.astype(jnp.float32), cfg)[2].reshape(x_btd.shape).astype(
        x_btd.dtype)


# ----------------------------------------------------------------------------- init

def init_params(cfg: SaeConfig, sample_nd: np.ndarray, key: jax.Array,
                probe_rows: int = 256) -> dict:
    """Gao et al.'s initialisation from a sample of activations:

    * tied: the decoder is the transposed encoder (uniform ±1/√d), its rows (latent
      directions) then at unit norm;
    * b_dec (b_pre) = the geometric median of ``sample_nd`` (Weiszfeld), b_enc = 0;
    * the encoder divided by the mean norm of x̂ − b_dec over ``probe_rows`` random unit
      vectors placed at b_dec, so those reconstructions have mean norm 1 (both
      activations are positively homogeneous with b_enc = 0, so one division is exact).
    """
    k_w, k_probe = jax.random.split(key)
    w_enc_dl = jax.random.uniform(k_w, (cfg.d, cfg.n_latents), jnp.float32,
                                  -1 / np.sqrt(cfg.d), 1 / np.sqrt(cfg.d))
    params = {"w_enc_dl": w_enc_dl, "b_enc_l": jnp.zeros((cfg.n_latents,), jnp.float32),
              "w_dec_ld": normalize_rows(w_enc_dl.T),
              "b_dec_d": jnp.asarray(geometric_median(sample_nd))}
    u_nd = jax.random.normal(k_probe, (probe_rows, cfg.d), jnp.float32)
    u_nd = u_nd / jnp.linalg.norm(u_nd, axis=-1, keepdims=True)
    _, _, xhat_nd = forward(params, u_nd + params["b_dec_d"], cfg)
    norm = jnp.mean(jnp.linalg.norm(xhat_nd - params["b_dec_d"], axis=-1))
    return {**params, "w_enc_dl": params["w_enc_dl"] / jnp.maximum(norm, 1e-12)}


def mse_scale(sample_nd: np.ndarray) -> float:
    """1 / the per-element variance of the activations: makes the TopK MSE term O(1)."""
    x = np.asarray(sample_nd, np.float64)
    return float(1.0 / max(((x - x.mean(axis=0)) ** 2).mean(), 1e-30))


# ----------------------------------------------------------------------------- decoder norm

def normalize_rows(w_ld: jax.Array) -> jax.Array:
    return w_ld / jnp.maximum(jnp.linalg.norm(w_ld, axis=-1, keepdims=True), 1e-12)


def normalize_decoder(params) -> dict:
    """Params with every decoder row (latent direction) back at unit norm: applied after
    each optimizer step."""
    return {**params, "w_dec_ld": normalize_rows(params["w_dec_ld"])}


def project_decoder_grad(g_ld: jax.Array, w_ld: jax.Array) -> jax.Array:
    """The decoder gradient without its component along each (unit) decoder row: a step
    then moves directions, not their norms (which the renormalisation would undo)."""
    u_ld = normalize_rows(w_ld)
    return g_ld - jnp.sum(g_ld * u_ld, axis=-1, keepdims=True) * u_ld


def decoder_grad_projection() -> optax.GradientTransformation:
    """optax transformation applying ``project_decoder_grad`` to ``w_dec_ld``'s gradient;
    chain it before the optimizer (it needs the params)."""
    def update(updates, state, params=None):
        if params is None:
            raise ValueError("decoder_grad_projection needs the params")
        return {**updates, "w_dec_ld": project_decoder_grad(updates["w_dec_ld"],
                                                            params["w_dec_ld"])}, state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


# ----------------------------------------------------------------------------- dead latents

def fired(z_nl: jax.Array) -> jax.Array:
    """[L] 1.0 where the latent's activation exceeded FIRED on some row, else 0.0."""
    return jnp.any(z_nl > FIRED, axis=0).astype(jnp.float32)


def tokens_since_fired(since_l: jax.Array, fired_l: jax.Array, tokens: int) -> jax.Array:
    """The per-latent count of tokens since its last firing after a batch of ``tokens``
    (0 where it fired in the batch)."""
    return jnp.where(fired_l > 0, 0.0, since_l + tokens)


def dead(since_l: jax.Array, cfg: SaeConfig) -> jax.Array:
    """[L] bool: no firing for more than ``cfg.dead_tokens`` tokens."""
    return since_l > cfg.dead_tokens
