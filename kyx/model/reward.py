"""Scalar-head model: a Decoder backbone (dense or MoE) plus a linear value head.

``RewardModel(cfg).apply({"params": p}, tokens_bt, segment_ids_bt, positions_bt)`` returns
``(values_bt, aux)``: one scalar per position, w · h_t on the final (normed) hidden state;
the reward of a sequence is the value at its last real token (``last_token_values``). No
bias: Bradley–Terry only sees reward differences, so a bias would get no gradient but
rounding noise (which Adam would amplify). The
backbone is exactly a pretraining Decoder, stored under ``params["backbone"]``, so
``init_from`` can load a pretraining run into it (``with_backbone``). Its LM head is kept
but unused (XLA drops the dead logits). ``aux`` is the Decoder's (MoE loss and metrics).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from kyx.model.config import ModelConfig
from kyx.model.layers import linear_head
from kyx.model.transformer import Decoder


def _value_head(module: nn.Module, hidden_btd):
    """w · h_t per position (float32), with w the module's ``value_kernel`` [d]."""
    return linear_head(module, "value_kernel", hidden_btd)


class RewardModel(nn.Module):
    cfg: ModelConfig

    @property
    def param_dtype(self):
        return self.cfg.storage_dtype

    @nn.compact
    def __call__(self, tokens_bt, segment_ids_bt=None, positions_bt=None):
        _, aux = Decoder(self.cfg, name="backbone")(tokens_bt, segment_ids_bt, positions_bt)
        return _value_head(self, aux["hidden_btd"]), aux


class PolicyWithValue(nn.Module):
    """A Decoder policy with a value head on its final hidden states (PPO with a critic that
    shares the policy's backbone). ``apply`` is a Decoder's (``(logits_btv, aux)``, KV
    cache included, so it generates like one) with ``aux["values_bt"]`` added; the params
    have the RewardModel layout (``backbone`` + ``value_kernel``)."""
    cfg: ModelConfig

    @property
    def param_dtype(self):
        return self.cfg.storage_dtype

    @nn.compact
    def __call__(self, tokens_bt, segment_ids_bt=None, positions_bt=None, cache=None):
        logits_btv, aux = Decoder(self.cfg, name="backbone")(tokens_bt, segment_ids_bt,
                                                             positions_bt, cache)
        return logits_btv, {**aux, "values_bt": _value_head(self, aux["hidden_btd"])}


def last_token_values(values_bt, segment_ids_bt):
    """Value at each row's last real token (rows hold one right-padded sequence)."""
    last_b = jnp.maximum(jnp.sum(segment_ids_bt > 0, axis=-1) - 1, 0)
    return jnp.take_along_axis(values_bt, last_b[:, None], axis=-1)[:, 0]


def with_backbone(params, backbone_params):
    """RewardModel / PolicyWithValue params with the backbone replaced (e.g. by a
    pretraining run's params)."""
    return {**params, "backbone": backbone_params}
