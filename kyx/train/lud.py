"""Lexical Unit Decoding training (KwaiYii; ALGORITHMS.md §5 steps 1-3).

    kyx train --config configs/lud.py:tiny --workdir runs/lud --config.init_from=runs/sft

1. The ``init_from`` model (fine-tuned on the same records, or pretrained) mines lexical
   units of every train record's response: teacher-forced LUD (kyx/model/lud.py
   ``mine_units``), a unit being a maximal run of positions predicted correctly with
   confidence >= ``lud.alpha`` from the prefix alone.
2. A fraction ``lud.fraction`` of the records (chosen by a hash of their tokens, so the
   choice is the same on every process and after a restart) is reconfigured: the inputs
   inside a unit become the placeholder ``<|ph|>``; targets stay, so the model learns to
   emit a whole unit from the prefix. The placeholder is an input, never a target.
3. Training continues with the SFT loss on the mixture of reconfigured and normal rows;
   evaluation is plain SFT evaluation on normal rows (``eval/loss`` is comparable with
   the source SFT run's).

Mined units are cached in ``data_dir/lud/`` by (records, tokenizer, source params,
options), so a resumed run reads the same data without mining again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from kyx.data import pipeline
from kyx.data import preference as data_pref
from kyx.data.corpus import default_data_dir
from kyx.data.tokenizer import placeholder_id
from kyx.errors import ConfigError
from kyx.fileio import atomic_write, read_checked
from kyx.logs import get_logger
from kyx.model import lud as lud_model
from kyx.model.config import ModelConfig
from kyx.model.transformer import Decoder
from kyx.train import posttrain, sft, validation
from kyx.train.checks import boolean, integer, number
from kyx.train.base import Trainer, make_trainer

log = get_logger(__name__)
MINING_VERSION = 1


def default_config():
    cfg = sft.default_config()
    cfg.trainer = "lud"
    cfg.lud = dict(k=4, alpha=0.9, fraction=0.5, repetition_control=True, mine_batch=32)
    return cfg


validation.field("lud.k", integer(lo=2, note="positions per step: 1 + placeholders"),
                 trainers=("lud",))
validation.field("lud.alpha", number(lo=0, hi=1), trainers=("lud",))
validation.field("lud.fraction", number(lo=0, hi=1), trainers=("lud",))
validation.field("lud.repetition_control", boolean(), trainers=("lud",))
validation.field("lud.mine_batch", integer(lo=1), trainers=("lud",))


@validation.rule(trainers=("lud",))
def _no_negatives(cfg):
    if cfg.loss.get("negative_feedback"):
        yield ("loss.negative_feedback", True,
               "LUD training uses the plain SFT loss; run negative feedback as an SFT stage")


def build_step(cfg):
    return sft.build_step(cfg)


def record_key(tokens) -> str:
    return hashlib.sha256(np.asarray(tokens, np.int32).tobytes()).hexdigest()[:24]


def _params_fingerprint(params) -> str:
    """Cheap, exact-enough identity of a parameter tree: shapes plus per-leaf sums."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    sums = jax.jit(lambda ps: [(jnp.sum(p.astype(jnp.float32)),
                                jnp.sum(jnp.square(p.astype(jnp.float32)))) for p in ps])(
        [p for _, p in leaves])
    desc = [(jax.tree_util.keystr(k), list(p.shape), float(a), float(b))
            for (k, p), (a, b) in zip(leaves, sums)]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def _train_elements(cfg, records, template) -> list[dict]:
    """The positive SFT elements of every train record, as training builds them."""
    elements = data_pref.SftElements(template, cfg.data.seq_len, False, 0,
                                     cfg.data.records.system, data_pref.Stats())
    source = records.source("train")
    return [e for i in range(len(source)) for e in elements.flat_map(source[i])]


def mine(cfg, model: Decoder, params, elements: list[dict], ph: int) -> dict[str, np.ndarray]:
    """record key -> int32 positions of the inputs inside lexical units."""
    lud, width = cfg.lud, cfg.data.seq_len
    out, units, covered, learned = {}, 0, 0, 0
    t0 = time.time()
    for start in range(0, len(elements), lud.mine_batch):
        chunk = elements[start:start + lud.mine_batch]
        tokens = np.zeros((lud.mine_batch, width), np.int32)
        learn = np.zeros((lud.mine_batch, width), np.int32)
        for i, e in enumerate(chunk):
            tokens[i, :len(e["tokens"])] = e["tokens"]
            learn[i, :len(e["mask"])] = e["mask"] > 0
        mined = lud_model.mine_units(model, params, jnp.asarray(tokens), jnp.asarray(learn),
                                     k=int(lud.k), ph_id=ph, alpha=float(lud.alpha),
                                     repetition_control=bool(lud.repetition_control))
        placeholder = np.asarray(mined["placeholder"])
        for i, e in enumerate(chunk):
            out[record_key(e["tokens"])] = np.flatnonzero(placeholder[i]).astype(np.int32)
        units += int(np.asarray(mined["units"]).sum())
        covered += int(np.asarray(mined["unit_tokens"]).sum())
        learned += int(learn.sum())
    log.info("LUD mining: %d records, %d units covering %d of %d response tokens (%.1f%%), "
             "mean unit %.2f tokens, %.1f s", len(elements), units, covered, learned,
             100.0 * covered / max(learned, 1), covered / max(units, 1), time.time() - t0)
    return out


def _cache_path(cfg, records, tokenizer, fingerprint: str) -> str:
    opts = {k: cfg.lud[k] for k in ("k", "alpha", "repetition_control")}
    tok = hashlib.sha256(getattr(tokenizer, "model_proto", b"")).hexdigest()[:16]
    key = json.dumps([records.fingerprint, tok, tokenizer.vocab_size, fingerprint, opts,
                      cfg.data.seq_len, cfg.data.records.system, MINING_VERSION],
                     sort_keys=True, default=str)
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    return os.path.join(cfg.data.data_dir or default_data_dir(), "lud", f"units_{name}.npz")


def mined_units(cfg, records, tokenizer, template, ph: int) -> dict[str, np.ndarray]:
    """Mine (or read back) the units of the train records with the initial params."""
    model = Decoder(ModelConfig.from_config(cfg.model))
    params = posttrain.initial_params_loader(cfg, model)()
    path = _cache_path(cfg, records, tokenizer, _params_fingerprint(params))
    if os.path.exists(path):
        with np.load(io.BytesIO(read_checked(path))) as z:
            return {k: z[k] for k in z.files}
    units = mine(cfg, model, params, _train_elements(cfg, records, template), ph)
    buf = io.BytesIO()
    np.savez(buf, **units)
    atomic_write(path, buf.getvalue(), checksum=True)
    return units


class Reconfigure:
    """Element transform: inputs inside mined units -> the placeholder, for the records
    whose key hashes below ``fraction`` (an unmined record passes unchanged)."""

    def __init__(self, units: dict[str, np.ndarray], ph: int, fraction: float, seed: int):
        self.units, self.ph, self.fraction, self.seed = units, ph, fraction, seed

    def chosen(self, key: str) -> bool:
        h = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return int.from_bytes(h[:8], "little") / 2.0**64 < self.fraction

    def __call__(self, element: dict) -> dict:
        key = record_key(element["tokens"])
        positions = self.units.get(key)
        if positions is None or not len(positions) or not self.chosen(key):
            return element
        tokens = np.array(element["tokens"], copy=True)
        tokens[positions] = self.ph
        return {**element, "tokens": tokens}


def build(cfg) -> Trainer:
    step = build_step(cfg)
    records, tokenizer, template = posttrain.prepare(cfg, "sft")
    ph = placeholder_id(tokenizer)
    units = mined_units(cfg, records, tokenizer, template, ph)
    split = pipeline.process_split()
    train_iter = data_pref.make_sft_iterator(
        cfg.data, records, template, "train",
        transform=Reconfigure(units, ph, float(cfg.lud.fraction), int(cfg.data.seed)), **split)
    evals = {}
    if len(records.source("validation")):
        evals = dict(
            eval_fn=sft.eval_fn_for(step.models["policy"].module),
            summarize_eval=sft.summarize_eval,
            eval_batches=lambda: data_pref.make_sft_iterator(
                cfg.data, records, template, "validation", negatives=True, max_negatives=0,
                **split))
    return make_trainer(cfg, step, train_iter=train_iter,
                        batch_axes=data_pref.SFT_AXES, tokenizer=tokenizer, **evals)
