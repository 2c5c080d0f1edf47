"""ColBERT encoder: a Decoder backbone plus a bias-free projection of its final hidden states.

``ColbertEncoder(cfg, dim).apply({"params": p}, tokens_bt, segment_ids_bt)`` returns
``(proj_btk, aux)``: W^T h_t per position (float32, k = ``dim``, 128 in ColBERT), not yet
masked or normalised (kyx/objectives/late_interaction.py does both, mask first). The
backbone is exactly a pretraining Decoder under ``params["backbone"]`` (``init_from``
loads a pretraining or SFT run into it, as for the reward model, kyx/model/reward.py);
its LM head is kept but unused (XLA drops the dead logits). Attention is the decoder's
causal attention: a token's vector sees the text up to it, and the query's trailing
mask tokens see the whole query.
"""
from __future__ import annotations

import flax.linen as nn

from kyx.model.config import ModelConfig
from kyx.model.layers import linear_head
from kyx.model.transformer import Decoder


class ColbertEncoder(nn.Module):
    cfg: ModelConfig
    dim: int = 128

    @property
    def param_dtype(self):
        return self.cfg.storage_dtype

    @nn.compact
    def __call__(self, tokens_bt, segment_ids_bt=None, positions_bt=None):
        _, aux = Decoder(self.cfg, name="backbone")(tokens_bt, segment_ids_bt, positions_bt)
        return linear_head(self, "colbert_kernel", aux["hidden_btd"], (self.dim,), (None,)), aux
