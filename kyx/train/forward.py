"""The one training forward: RNG streams, MoE auxiliary loss and metrics, routing probes.

Every trainer runs its models through ``forward_with_aux`` so that the training-only
randomness (router jitter, attention-weight reuse), the MoE auxiliary loss and the
per-layer MoE metrics are the same everywhere. A loss function receives a
``LossContext``: the step's RNG key (None: deterministic, as in evaluation), the zero
routing-error probes whose gradient carries the flagged-pair counts, and the params of
the state's other models (e.g. DPO's frozen ``ref``; never differentiated).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax

from kyx.model.moe import PROBE_COLLECTION
from kyx.objectives import moe as moe_objectives

# fold_in indices of the flax RNG streams a training forward uses
RNG_STREAMS = {"jitter": 0, "reuse": 1}


def model_rngs(rng: jax.Array | None) -> dict | None:
    """Flax rng streams for training-only randomness; None (deterministic) without a key."""
    if rng is None:
        return None
    return {name: jax.random.fold_in(rng, i) for name, i in RNG_STREAMS.items()}


@dataclasses.dataclass(frozen=True)
class LossContext:
    """What a loss function gets besides (params, batch)."""
    rng: jax.Array | None = None
    probes: Any = None                        # zero routing-error probes (or None)
    models: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # other models' params


class Forward(NamedTuple):
    out: Any              # the module's first output (logits_btv, values_bt ...)
    aux_loss: jax.Array   # MoE load-balance + z-loss (0.0 for dense models)
    metrics: dict         # moe/layer{i}/... and moe/loss (empty for dense models)
    aux: dict             # the module's raw aux (hidden states, cache ...)


def forward_with_aux(model, params, inputs: Mapping, rng: jax.Array | None = None,
                     probes: Any = None) -> Forward:
    """``model.apply`` on ``inputs["tokens"]`` (+ ``segment_ids``, ``positions``).

    With ``rng`` the training-only randomness is on (streams from ``RNG_STREAMS``), and
    the same key gives the same draws: two forwards of equal params with one key agree
    exactly (DPO's reference at step 0). ``probes``: the zero ``moe_probe`` collection.
    """
    variables = {"params": params}
    if probes:
        variables[PROBE_COLLECTION] = probes
    out, aux = model.apply(variables, inputs["tokens"], inputs.get("segment_ids"),
                           inputs.get("positions"), rngs=model_rngs(rng))
    aux_loss, metrics = moe_objectives.moe_loss_and_metrics(aux, _layer_ids(model))
    return Forward(out, aux_loss, metrics, aux)


def _layer_ids(model) -> tuple:
    return tuple(getattr(model.cfg, "moe_layer_ids", ()))
