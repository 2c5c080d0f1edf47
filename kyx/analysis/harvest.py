"""Harvest a trained model's activations at one site into an ActivationBuffer.

The model reads its own run's data (the workdir's data config and tokenizer): training
rows for the ``train`` split, the held-out validation pass for ``val``. Padding
positions are dropped; every other token contributes one row. Rows are streamed into
shards as they come (BufferWriter: memory holds one shard), ``meta.json`` last, so an
interrupted harvest leaves nothing that reads as complete (kyx/analysis/activation_buffer.py).
"""
from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

from kyx.analysis import activation_buffer, sites
from kyx.errors import ConfigError
from kyx.logs import get_logger

log = get_logger(__name__)

ROWS_PER_SHARD = 65536


def model_batches(loaded, split: str, batch_size: int, seq_len: int, seed: int = 0,
                  data_overrides: dict | None = None):
    """Batches (numpy dicts: tokens, segment_ids, positions, targets, loss_mask) of the
    loaded run's own corpus and tokenizer; ``split`` 'train' (endless, i.i.d. or packed as
    the run was) or 'validation' (one ordered pass)."""
    from kyx.data import pipeline

    if loaded.from_hf:
        raise ConfigError(f"{loaded.source} is a Hugging Face directory without a kyx data "
                          f"config; harvest from a kyx workdir (kyx convert --from-hf first)")
    dcfg = loaded.config.data.copy_and_resolve_references()
    with dcfg.unlocked():
        dcfg.update({"batch_size": batch_size, "seq_len": seq_len, "seed": seed,
                     **(data_overrides or {})})
    corpus, _ = pipeline.prepare(dcfg)
    return pipeline.make_iterator(dcfg, corpus, loaded.tokenizer, split)


def activation_fn(loaded, site: sites.Site):
    """jit: (tokens_bt, segment_ids_bt, positions_bt) -> act_btd at ``site`` (float32)."""
    def act(tokens_bt, segment_ids_bt, positions_bt):
        _, act_btd = sites.run(loaded.model, loaded.params, tokens_bt, segment_ids_bt,
                               positions_bt, site=site)
        return act_btd.astype(np.float32)
    return jax.jit(act)


def harvest(model_workdir: str, site: str, out_path: str, *, tokens: int, batch_size: int = 8,
            seq_len: int = 128, step: int = -1, data_overrides: dict | None = None,
            val_fraction: float = 0.05, seed: int = 0, progress: bool | None = None
            ) -> activation_buffer.ActivationBuffer:
    """Activations at ``site`` of the model in ``model_workdir`` (checkpoint ``step``; -1 =
    newest) over ``tokens`` training tokens plus ``val_fraction * tokens`` validation
    tokens, written to ``out_path``. An existing complete buffer of the same model, step,
    site and size is reused."""
    import kyx

    if tokens <= 0 or not 0 <= val_fraction < 1:
        raise ConfigError(f"harvest: tokens must be > 0 (got {tokens}) and val_fraction in "
                          f"[0, 1) (got {val_fraction})")
    loaded = kyx.load(model_workdir, step)
    where = sites.parse_site(site, loaded.model.cfg)
    meta = {"site": where.name, "model_workdir": os.path.abspath(model_workdir),
            "step": loaded.step if loaded.step is not None else _newest_step(model_workdir),
            "tokens": int(tokens), "seq_len": int(seq_len), "seed": int(seed)}
    if activation_buffer.exists(out_path):
        buf = activation_buffer.ActivationBuffer(out_path)
        same = {k: buf.meta.get(k) for k in meta} == meta
        if same:
            return buf
        raise ConfigError(f"{out_path} already holds a different activation buffer "
                          f"({ {k: buf.meta.get(k) for k in meta} }); choose another path or "
                          f"delete it")
    act = activation_fn(loaded, where)
    writer = activation_buffer.BufferWriter(out_path, loaded.model.cfg.d_model, ROWS_PER_SHARD)
    show = sys.stderr.isatty() if progress is None else progress
    start = time.perf_counter()
    _collect(act, model_batches(loaded, "train", batch_size, seq_len, seed, data_overrides),
             tokens, show, writer, "train")
    want_val = int(round(tokens * val_fraction))
    if want_val:
        _collect(act, model_batches(loaded, "validation", batch_size, seq_len, seed,
                                    data_overrides), want_val, show, writer, "val")
    meta["harvest_seconds"] = round(time.perf_counter() - start, 2)
    return writer.finish(meta)


def _collect(act, batches, want: int, show: bool, writer, split: str) -> int:
    """Adds up to ``want`` rows of non-padding activations from ``batches`` to ``writer``."""
    from tqdm.auto import tqdm

    have, logged = 0, 0
    with tqdm(total=want, desc=f"harvest {split}", unit="tok", disable=not show) as bar:
        for batch in batches:
            act_btd = np.asarray(act(batch["tokens"], batch["segment_ids"],
                                     batch["positions"]))
            rows = act_btd[np.asarray(batch["segment_ids"]) > 0][:want - have]
            writer.add(split, rows)
            have += len(rows)
            bar.update(len(rows))
            if not show and have * 4 // want > logged:  # no bar (a scheduler's log): quarters
                logged = have * 4 // want
                log.info("harvest %s: %d / %d tokens", split, have, want)
            if have >= want:
                break
    if not have:
        raise ConfigError(f"harvest {split}: the data gave no tokens")
    return have


def _newest_step(workdir: str) -> int | None:
    from kyx.checkpoint import workdir as workdir_lib

    steps = workdir_lib.checkpoint_steps(workdir)
    return steps[-1] if steps else None
