"""Shared set-up of the post-training trainers (sft, rm, dpo).

* Config: the pretraining sections plus ``data.records`` (kyx/data/preference.py).
* ``init_from`` (kyx.train.init_from.adopt_source): the source's architecture and
  tokenizer are adopted, so token ids match the pretrained model; without it the
  tokenizer is ``data.tokenizer.model_path`` or one trained (cached) on the corpus.
* Initial params: ``init_from`` params, else the fresh init the loop would make from
  ``train.seed`` (so a trainer can keep a copy, e.g. DPO's reference, before the loop).
"""
from __future__ import annotations

import jax
import ml_collections

from kyx import sharding
from kyx.data import chat, pipeline, preference, preference_corpus
from kyx.data.corpus import load_corpus
from kyx.errors import ConfigError
from kyx.model import config as model_config
from kyx.model.params import init_params, param_shardings
from kyx.train import defaults
from kyx.train.init_from import adopt_source, load_params


def base_config(trainer: str) -> ml_collections.ConfigDict:
    cfg = defaults.base_config()
    cfg.trainer = trainer
    cfg.model = model_config.default_config()
    cfg.data = preference.default_config()
    return cfg


def mesh_and_rules(cfg):
    rules = sharding.get_rules(cfg.mesh.rules)
    return sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES}), rules


def prepare(cfg, kind: str):
    """(records, tokenizer, chat template) for a trainer reading records of ``kind``."""
    adopt_source(cfg)  # idempotent; registry.build already did it
    corpus = []

    def corpus_fn():
        if not corpus:
            corpus.append(load_corpus(cfg.data))
        return corpus[0]

    tok_cfg = cfg.data.tokenizer
    tokenizer = pipeline.make_tokenizer(cfg.data, None if tok_cfg.model_path else corpus_fn())
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's {tokenizer.vocab_size}; raise model.vocab_size")
    mined = cfg.data.records.source == "mined"
    records = preference_corpus.load_records(cfg.data, kind, corpus_fn() if mined else None)
    skipped = records.stats.get("skipped")
    if skipped:
        print(f"{kind} records: skipped {sum(skipped.values())} malformed of "
              f"{records.stats['records_seen']} ({skipped}; e.g. "
              f"{next(iter(records.stats['skipped_at'].values()))[:3]})", flush=True)
    return records, tokenizer, chat.ChatTemplate(tokenizer)


def initial_params(cfg, model, mesh, rules):
    """init_from params, else the loop's fresh init for ``train.seed`` (placed on mesh)."""
    if cfg.get("init_from"):
        return load_params(cfg.init_from, model, mesh, rules)
    init_key, _ = jax.random.split(jax.random.key(cfg.train.seed))
    return init_params(model, init_key, mesh, rules)


def copy_params(params, model, mesh, rules):
    """A separate on-device copy (the state is donated; a reference must not alias it)."""
    shardings, _ = param_shardings(model, mesh, rules)
    return jax.jit(lambda p: jax.tree.map(lambda x: x + 0, p), out_shardings=shardings)(params)


def model_rngs(model_cfg, rng) -> dict:
    """Flax rng streams a training forward needs (attention reuse, router jitter)."""
    rngs = {}
    if model_cfg.attn_reuse_prob > 0:
        rngs["reuse"] = jax.random.fold_in(rng, 1)
    if model_cfg.is_moe and model_cfg.moe_router_jitter > 0:
        rngs["jitter"] = jax.random.fold_in(rng, 2)
    return rngs


def process_split():
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}
