"""Pretraining: packed next-token prediction with CE or MiLe (+ max-z / z-loss).

    kyx train --config configs/pretrain.py:tiny --workdir runs/tiny
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np

from kyx import axes as ax
from kyx.data import mixture, pipeline
from kyx.data.token_bytes import token_byte_lengths
from kyx.errors import ConfigError
from kyx.model import config as model_config
from kyx.model.config import ModelConfig
from kyx.model.transformer import Decoder
from kyx.objectives import lm
from kyx.train.base import Trainer, make_trainer, single_model_step
from kyx.train import hooks as hooks_lib
from kyx.train import scaling_hook
from kyx.train.evaluation import trainer_eval
from kyx.train.forward import forward_with_aux
from kyx.train.init_from import params_loader

BATCH_AXES = {k: ax.BT for k in ("tokens", "targets", "segment_ids", "positions", "loss_mask")}


def default_config():
    """Every section a pretraining run has, with component defaults (no preset applied)."""
    from kyx.train import defaults

    cfg = defaults.base_config()
    cfg.trainer = "pretrain"
    cfg.model = model_config.default_config()
    cfg.data = pipeline.default_config()
    cfg.loss = lm.default_config()
    cfg.scaling = scaling_hook.default_config()
    return cfg


def config_for_model(model_cfg: ModelConfig):
    """A full pretraining config whose model section is ``model_cfg`` (converted models)."""
    cfg = default_config()
    for key, value in vars(model_cfg).items():
        cfg.model[key] = value
    return cfg


def make_loss_fn(model: Decoder, loss_cfg):
    """loss_fn(params, batch, ctx) -> (loss, metrics): next-token loss on packed rows plus
    the MoE auxiliary losses (kyx/train/forward.py)."""
    loss_cfg = dict(loss_cfg)

    def loss_fn(params, batch, ctx):
        fwd = forward_with_aux(model, params, batch, ctx.rng, ctx.probes)
        loss, metrics = lm.lm_loss(fwd.out, batch["targets"], batch["loss_mask"], loss_cfg)
        return loss + fwd.aux_loss, {**metrics, **fwd.metrics, "loss": loss + fwd.aux_loss}
    return loss_fn


def make_eval_fn(model: Decoder, max_len: int, bos_id: int | None,
                 byte_lengths: np.ndarray | None = None):
    """Sums over a validation batch: CE, token count and per-position CE statistics; with
    ``byte_lengths`` (np.int32 [vocab]: UTF-8 bytes per id, kyx/data/token_bytes.py) also
    the bytes of text the masked targets stand for (``bytes``, for bits per byte).

    Per-position sums (the temporal scaling law's input, kyx/scaling) are kept apart for
    segments that start a document (first token BOS: position = offset from the document
    start, the context the model sees) and for continuation pieces of a document cut at a
    row boundary (position = offset from the cut). Together they add up to ``loss_sum``.
    """
    table = None if byte_lengths is None else jnp.asarray(byte_lengths, jnp.int32)

    def eval_fn(params, batch):
        logits_btv = forward_with_aux(model, params["policy"], batch).out
        mask = batch["loss_mask"].astype(jnp.float32)
        ce_bt, _ = lm.token_cross_entropy(logits_btv, batch["targets"])
        doc_start_bt = (jnp.ones_like(mask) if bos_id is None else
                        starts_document(batch["tokens"], batch["positions"], bos_id))
        pos_sum, pos_count = lm.per_position_loss(logits_btv, batch["targets"],
                                                  mask * doc_start_bt, batch["positions"], max_len)
        cont_sum, cont_count = lm.per_position_loss(logits_btv, batch["targets"],
                                                    mask * (1.0 - doc_start_bt),
                                                    batch["positions"], max_len)
        sums = {"loss_sum": jnp.sum(ce_bt * mask), "tokens": jnp.sum(mask),
                "pos_sum": pos_sum, "pos_count": pos_count,
                "cont_sum": cont_sum, "cont_count": cont_count}
        if table is not None:
            sums["bytes"] = target_bytes(table, batch["targets"], batch["loss_mask"])
        return sums
    return eval_fn


def target_bytes(table, targets_bt, mask_bt):
    """int32 sum of ``table[target]`` over the targets where the mask is set (an integer
    sum: exact over any number of batches below 2**31 bytes)."""
    return jnp.sum(jnp.where(mask_bt > 0, jnp.take(table, targets_bt, mode="clip"), 0),
                   dtype=jnp.int32)


def starts_document(tokens_bt, positions_bt, bos_id: int):
    """1.0 where a token's segment begins with BOS (a whole document from its start), 0.0
    in continuation pieces; the segment's first token sits ``positions`` tokens back."""
    first_bt = jnp.arange(tokens_bt.shape[1])[None, :] - positions_bt
    first_tok_bt = jnp.take_along_axis(tokens_bt, jnp.clip(first_bt, 0, None), axis=1)
    return (first_tok_bt == bos_id).astype(jnp.float32)


def _compact(values) -> list:
    """Sums rounded to 4 decimals and counts as integers: eval_stats.jsonl stays small."""
    values = np.asarray(values, np.float64)
    if np.all(values == np.round(values)):
        return [int(v) for v in values]
    return [round(float(v), 4) for v in values]


def summarize_eval(sums):
    """Metrics of an eval pass (loss, perplexity, tokens; with ``bytes`` in the sums also
    ``eval/bits_per_byte``: CE in nats summed over the targets / (ln 2 x their UTF-8
    bytes), comparable across tokenizers) and its per-position statistics."""
    loss = float(sums["loss_sum"] / max(float(sums["tokens"]), 1.0))
    metrics = {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 80.0))),
               "eval/tokens": float(sums["tokens"])}
    if "bytes" in sums:   # nats summed over the targets / (ln 2 x their UTF-8 bytes)
        n_bytes = int(sums["bytes"])
        metrics["eval/bytes"] = float(n_bytes)
        metrics["eval/bits_per_byte"] = float(sums["loss_sum"]) / (math.log(2) * max(n_bytes, 1))
    artifacts = {"per_position_loss_sum": _compact(sums["pos_sum"]),
                 "per_position_count": _compact(sums["pos_count"]),
                 "continued_loss_sum": _compact(sums["cont_sum"]),
                 "continued_count": _compact(sums["cont_count"])}
    return metrics, artifacts


def build_step(cfg):
    """The StepSpec from a config, without touching data."""
    lm.check_config(cfg.loss)
    model = Decoder(ModelConfig.from_config(cfg.model))
    return single_model_step(cfg, model, make_loss_fn(model, cfg.loss),
                             init=params_loader(cfg, model))


def build(cfg, make_step: Callable | None = None,
          eval_batch: Callable | None = None) -> Trainer:
    """The pretraining Trainer. Variants of the objective reuse it (kyx/train/jrt.py):
    ``make_step(tokenizer) -> StepSpec`` replaces ``build_step(cfg)`` once the tokenizer is
    known (e.g. a loss needing a reserved id); ``eval_batch(batch) -> batch`` transforms
    each validation batch before ``make_eval_fn``'s sums (e.g. which targets count)."""
    step = build_step(cfg)  # config errors before any data work
    corpus, tokenizer = pipeline.prepare(cfg.data)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's {tokenizer.vocab_size}; raise model.vocab_size")
    if make_step is not None:
        step = make_step(tokenizer)
    split = pipeline.process_split()
    train_iter = pipeline.make_iterator(cfg.data, corpus, tokenizer, "train", **split)
    extra = ([source_eval_hook(cfg, corpus, tokenizer, split)]
             if isinstance(corpus, mixture.Mixture) else [])
    return make_trainer(
        cfg, step, train_iter=train_iter, batch_axes=BATCH_AXES,
        eval_fn=_with_batch(make_eval_fn(step.models["policy"].module, cfg.data.seq_len,
                                         tokenizer.bos_id,
                                         token_byte_lengths(tokenizer, cfg.model.vocab_size)),
                            eval_batch),
        eval_batches=lambda: pipeline.make_iterator(cfg.data, corpus, tokenizer, "validation",
                                                    **split),
        summarize_eval=summarize_eval, tokenizer=tokenizer, hooks=extra)


def _with_batch(eval_fn, transform: Callable | None):
    if transform is None:
        return eval_fn
    return lambda params, batch: eval_fn(params, transform(batch))


def source_eval_hook(cfg, corpus: mixture.Mixture, tokenizer, split: dict) -> hooks_lib.Hook:
    """``eval/<label>/loss`` (and perplexity, tokens, bytes, bits_per_byte) of each
    mixture source's validation split, in the same row as the pooled ``eval/...`` (it runs
    just before the eval hook, which writes the row); its per-position statistics go to
    eval_stats.jsonl with ``"source": label``."""
    def batches(label):
        return lambda: pipeline.make_iterator(corpus.configs[label], corpus.corpora[label],
                                              tokenizer, "validation", **split)

    def evaluate(run) -> None:
        run.collect()
        params = {n: m.params for n, m in run.state.models.items()}
        with run.untimed():
            for label in corpus.labels:
                source = dataclasses.replace(run.trainer, eval_batches=batches(label))
                metrics, artifacts = trainer_eval(source, params, run.mesh, run.rules,
                                                  run.eval_fn)
                run.record_eval_stats(artifacts, source=label)
                run.add_metrics(run.step, {f"eval/{label}/{k.split('/', 1)[1]}": v
                                           for k, v in metrics.items()})
    return hooks_lib.Hook("eval_sources", evaluate, every=cfg.train.eval_every,
                          order=hooks_lib.EVAL - 1,
                          at_start=cfg.train.get("eval_at_start", False))
