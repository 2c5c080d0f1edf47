"""JRT-RNN training (Arora et al. 2024, arXiv 2407.05483): pretraining whose loss is
next-token CE after a per-document prefix of M tokens + 0.25 x masked-LM CE inside it.

    kyx train --config configs/jrt.py:tiny --workdir runs/jrt

The pretraining trainer (kyx/train/pretrain.py: data, eval, hooks) with the loss of
kyx/objectives/jrt.py: each step masks ``loss.jrt_mask_rate`` of the prefix inputs with the
mask token (a key folded from the step's RNG), runs the model on the masked tokens, and
scores the next-token term (``loss.name``: CE or MiLe, + max-z / z-loss) on positions >= M
and the masked-LM term on the masked prefix tokens (same-position logits).

* M: ``model.pla_prefix_len`` (the prefix of the model's prefix-linear-attention layers)
  when the model config has it, else ``loss.jrt_prefix_len``; setting both to different
  values is an error.
* The mask token is the tokenizer's LUD placeholder ``<|ph|>`` (id 8 in tokenizers trained
  by kyx): a reserved control piece that ``encode`` never produces, so it is never a
  target. A separate mask piece would shift the byte pieces' ids (9..264) of every newly
  trained tokenizer and change the tokenizer cache fingerprint, so kyx reuses the one
  input-only id it already reserves (a model is trained with JRT or decoded with LUD, not
  both).
* Evaluation scores next-token CE on positions >= M of the unmasked rows (inside the
  prefix, a non-causal layer sees the tokens it would predict).
"""
from __future__ import annotations

import jax

from kyx.data.tokenizer import PLACEHOLDER
from kyx.errors import ConfigError
from kyx.model.config import ModelConfig
from kyx.model.transformer import Decoder
from kyx.objectives import jrt as jrt_objective
from kyx.objectives import lm
from kyx.train import pretrain, validation
from kyx.train.base import single_model_step
from kyx.train.checks import integer, number, one_of
from kyx.train.forward import forward_with_aux
from kyx.train.init_from import params_loader

KYX_MASK_ID = 8        # PLACEHOLDER's id in tokenizers trained by kyx (kyx/data/tokenizer.py)
MASK_FOLD = 1_000      # fold_in index of the masking key (model streams use 0, 1 ...)

validation.field("loss.jrt_mlm_weight", number(lo=0), trainers=("jrt",))
validation.field("loss.jrt_mask_rate", number(lo=0, below=1), trainers=("jrt",))
validation.field("loss.jrt_prefix_len", integer(lo=0), trainers=("jrt",))
for _key in ("mile_gamma", "max_z_weight", "z_loss_weight"):
    validation.field(f"loss.{_key}", number(lo=0), trainers=("jrt",))
validation.field("loss.name", one_of(lm.LM_LOSSES.names), trainers=("jrt",))


def default_config():
    cfg = pretrain.default_config()
    cfg.trainer = "jrt"
    cfg.loss.jrt_mlm_weight = jrt_objective.MLM_WEIGHT
    cfg.loss.jrt_mask_rate = jrt_objective.MASK_RATE
    cfg.loss.jrt_prefix_len = 0   # 0: model.pla_prefix_len
    return cfg


def prefix_len(cfg) -> int:
    """M: ``model.pla_prefix_len`` if the model config has one (> 0), else
    ``loss.jrt_prefix_len``; a ConfigError when neither is set or they disagree."""
    model_m = int(cfg.model.get("pla_prefix_len", 0) or 0)
    loss_m = int(cfg.loss.get("jrt_prefix_len", 0) or 0)
    if model_m and loss_m and model_m != loss_m:
        raise ConfigError(f"loss.jrt_prefix_len={loss_m} differs from model.pla_prefix_len="
                          f"{model_m}; set only one (the model's prefix is the loss's prefix)")
    m = model_m or loss_m
    if m < 1:
        raise ConfigError("JRT training needs a prefix length M >= 1: set model.pla_prefix_len "
                          "(prefix linear attention models) or loss.jrt_prefix_len")
    if m >= cfg.data.seq_len:
        raise ConfigError(f"prefix length M={m} leaves no next-token targets in rows of "
                          f"data.seq_len={cfg.data.seq_len}; use M < seq_len")
    return m


@validation.rule(trainers=("jrt",))
def _prefix_rule(cfg):
    """M's problems at validation time (`kyx train --print-config` reports them too)."""
    try:
        prefix_len(cfg)
    except ConfigError as e:
        yield "loss.jrt_prefix_len", cfg.loss.get("jrt_prefix_len"), str(e)


def make_loss_fn(model: Decoder, loss_cfg, prefix: int, mask_id: int):
    """loss_fn(params, batch, ctx): mask the prefix (key from ``ctx.rng``), forward the
    masked tokens, JRT loss (kyx/objectives/jrt.py) + the MoE auxiliary losses."""
    loss_cfg = dict(loss_cfg)
    weight, rate = float(loss_cfg["jrt_mlm_weight"]), float(loss_cfg["jrt_mask_rate"])

    def loss_fn(params, batch, ctx):
        key = jax.random.fold_in(ctx.rng, MASK_FOLD)
        masked_bt, mlm_mask_bt = jrt_objective.mask_prefix(
            key, batch["tokens"], batch["positions"], batch["segment_ids"], prefix, mask_id, rate)
        fwd = forward_with_aux(model, params, {**batch, "tokens": masked_bt}, ctx.rng,
                               ctx.probes)
        loss, metrics = jrt_objective.jrt_loss(
            fwd.out, batch["targets"], batch["loss_mask"], batch["positions"], batch["tokens"],
            mlm_mask_bt, prefix_len=prefix, mlm_weight=weight, lm_cfg=loss_cfg)
        return loss + fwd.aux_loss, {**metrics, **fwd.metrics, "loss": loss + fwd.aux_loss}
    return loss_fn


def build_step(cfg, mask_id: int = KYX_MASK_ID):
    lm.check_config(cfg.loss)
    model = Decoder(ModelConfig.from_config(cfg.model))
    loss_fn = make_loss_fn(model, cfg.loss, prefix_len(cfg), mask_id)
    return single_model_step(cfg, model, loss_fn, init=params_loader(cfg, model))


def mask_id(tokenizer) -> int:
    """The tokenizer's reserved input-only id (the LUD placeholder), or a ConfigError."""
    special = getattr(tokenizer, "special_id", lambda piece: None)
    i = special(PLACEHOLDER)
    if i is None:
        raise ConfigError(f"JRT training masks prefix tokens with the reserved piece "
                          f"{PLACEHOLDER!r}, which this tokenizer lacks; use a tokenizer "
                          "trained by kyx (data.tokenizer.kind sentencepiece or bpe)")
    return i


def build(cfg):
    m = prefix_len(cfg)

    def after_positions(batch):
        return {**batch, "loss_mask": batch["loss_mask"] * (batch["positions"] >= m)}
    return pretrain.build(cfg, make_step=lambda tok: build_step(cfg, mask_id(tok)),
                          eval_batch=after_positions)
