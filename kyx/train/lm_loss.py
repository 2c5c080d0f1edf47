"""The pretraining loss as a pure function of (params, batch): model forward + objective."""
from __future__ import annotations

from typing import Mapping

from kyx.model.transformer import Decoder
from kyx.objectives import lm

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


def make_loss_fn(model: Decoder, loss_cfg: Mapping):
    """loss_fn(params, batch) -> (loss, metrics) for packed next-token prediction."""
    def loss_fn(params, batch):
        logits_btv, _ = model.apply({"params": params}, batch["tokens"], batch["segment_ids"],
                                    batch["positions"])
        return lm.lm_loss(logits_btv, batch["targets"], batch["loss_mask"], loss_cfg)
    return loss_fn
