"""Shared set-up of the post-training trainers (sft, rm, dpo).

* Config: the pretraining sections plus ``data.records`` (kyx/data/preference.py).
* ``init_from`` (adopted by ``kyx.train.registry.build``): the source's architecture and
  tokenizer are used, so token ids match the pretrained model; without it the
  tokenizer is ``data.tokenizer.model_path`` or one trained (cached) on the corpus.
* Initial params: ``init_from`` params, else the seeded fresh init the loop would make
  for the first model (so a trainer can share them, e.g. DPO's reference).
"""
from __future__ import annotations

import functools

import ml_collections

from kyx import sharding
from kyx.data import pipeline, preference, preference_corpus, templates
from kyx.data.corpus import load_corpus
from kyx.errors import ConfigError
from kyx.logs import get_logger
from kyx.model import config as model_config
from kyx.model.params import init_params
from kyx.train import defaults
from kyx.train.init_from import load_params
from kyx.train.state import model_init_key

log = get_logger(__name__)


def base_config(trainer: str) -> ml_collections.ConfigDict:
    cfg = defaults.base_config()
    cfg.trainer = trainer
    cfg.model = model_config.default_config()
    cfg.data = preference.default_config()
    return cfg


def prepare(cfg, kind: str):
    """(records, tokenizer, chat template) for a trainer reading records of ``kind``
    (after ``registry.build`` adopted the ``init_from`` source's tokenizer)."""
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
        log.info("%s records: skipped %d malformed of %d (%s; e.g. %s)", kind,
                 sum(skipped.values()), records.stats["records_seen"], skipped,
                 next(iter(records.stats["skipped_at"].values()))[:3])
    return records, tokenizer, templates.make_template(
        tokenizer, cfg.data.records.get("chat_template", "auto"))


def initial_params_loader(cfg, model):
    """A memoised zero-argument loader of the run's initial params: ``init_from`` params,
    else the loop's fresh init of the first model for ``train.seed`` (on the run's mesh)."""
    @functools.cache
    def load():
        if cfg.get("init_from"):
            return load_params(cfg, model)
        mesh, rules = sharding.mesh_from_config(cfg.mesh)
        return init_params(model, model_init_key(cfg.train.seed, 0), mesh, rules)
    return load
