"""Response log-probs of sequence batches, and reference log-probs precomputed in one pass.

``sequence_logps`` runs the policy (or reference) once on all sequences of a pair / KTO
batch (concatenated along the batch axis) and returns, per sequence name, the summed
log-prob over the loss mask (response tokens, minus formatting tokens when
``mask_format``), its token count, and the sum / count over all response tokens (for NLL
terms).

``reference_table`` computes the reference model's summed log-probs of every record of a
split, in record order, with exactly the masks training uses, and caches them as
``<data_dir>/reference_logps/<key>.npy`` next to the dataset. The key covers the dataset,
the split, the reference (init_from path and checkpoint step, or the seed of a fresh
init), the tokenizer, ``seq_len`` and the masking, so a different reference never reuses
a stale table. Training then reads ``ref_<name>_logps`` from the batch instead of
running a frozen copy; both paths give the same loss.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding
from kyx.data import preference
from kyx.data.corpus import default_data_dir
from kyx.distributed import is_writer
from kyx.fileio import atomic_write
from kyx.objectives.sft import token_logps
from kyx.train.forward import forward_with_aux


def sequence_logps(model, params, batch, names, mask_format: bool, rng=None, probes=None):
    """({name: s_b, n_name: count_b, nll_name: s_full_b, nll_n_name: count_full_b}, Forward).

    One forward over all sequences (concatenated along the batch) through
    ``forward_with_aux``: with ``rng`` the training-only randomness is on."""
    cat = lambda key: jnp.concatenate([batch[f"{n}_{key}"] for n in names], axis=0)  # noqa: E731
    fwd = forward_with_aux(model, params, {"tokens": cat("tokens"),
                                           "segment_ids": cat("segment_ids")}, rng, probes)
    logp_bt = token_logps(fwd.out, cat("targets"))
    full_bt = cat("loss_mask")
    mask_bt = full_bt * (1.0 - cat("format_mask")) if mask_format else full_bt
    b = batch[f"{names[0]}_tokens"].shape[0]
    out = {}
    for i, n in enumerate(names):
        rows = slice(i * b, (i + 1) * b)
        out[n] = jnp.sum(logp_bt[rows] * mask_bt[rows], axis=-1)
        out[f"n_{n}"] = jnp.sum(mask_bt[rows], axis=-1)
        out[f"nll_{n}"] = jnp.sum(logp_bt[rows] * full_bt[rows], axis=-1)
        out[f"nll_n_{n}"] = jnp.sum(full_bt[rows], axis=-1)
    return out, fwd


def table_key(cfg, records, tokenizer, split: str, reference: str) -> str:
    proto = getattr(tokenizer, "model_proto", None)
    tok = hashlib.sha256(proto).hexdigest()[:12] if proto else getattr(tokenizer, "path", "")
    key = {"records": records.fingerprint, "split": split, "reference": reference,
           "tokenizer": tok, "seq_len": cfg.data.seq_len, "system": cfg.data.records.system,
           "mask_format": bool(cfg.loss.mask_format_tokens), "model": cfg.model.to_dict(),
           "chat_template": [cfg.data.records.get("chat_template", "auto"),
                             getattr(tokenizer, "chat_template", None)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def reference_id(cfg) -> str:
    """Identifies the reference params: init_from path + newest step, or the fresh-init seed."""
    if not cfg.get("init_from"):
        return f"init:seed={cfg.train.seed}"
    ckpt = os.path.join(os.path.abspath(cfg.init_from), "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []
    mtime = os.stat(os.path.join(ckpt, str(steps[-1]))).st_mtime_ns if steps else 0
    return f"{os.path.abspath(cfg.init_from)}@{steps[-1] if steps else -1}:{mtime}"


def compute_table(cfg, model, params, records, template, split: str, mesh, rules):
    """[N, num_sequences] summed reference log-probs in record order (one ordered pass)."""
    kind = records.kind
    names = preference.SEQUENCES[kind]
    axes = preference.pair_axes(kind, with_ref=False)
    batch_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in axes.items()}

    def fn(p, batch):
        out, _ = sequence_logps(model, p, batch, names, cfg.loss.mask_format_tokens)
        return jnp.stack([out[n] for n in names], axis=-1)

    p_sh = jax.tree.map(lambda x: x.sharding, params)
    jfn = jax.jit(fn, in_shardings=(p_sh, batch_sh))
    data_cfg = cfg.data.copy_and_resolve_references()
    data_cfg.eval_batches = 0  # every record
    it = preference.make_pair_iterator(data_cfg, records, template, split, ordered=True,
                                       keep_index=True, process_index=jax.process_index(),
                                       process_count=jax.process_count())
    table = np.full((len(records.source(split)), len(names)), np.nan, np.float32)
    with sharding.use_mesh(mesh, rules):
        for batch in it:
            index, weight = batch.pop("index"), batch["weight"]
            dev = {k: jax.make_array_from_process_local_data(batch_sh[k], v)
                   for k, v in batch.items()}
            vals = _gather(jfn(params, dev))
            index, weight = _gather_host(index), _gather_host(weight)
            table[index[weight > 0]] = vals[weight > 0]
    if np.isnan(table).any():
        raise RuntimeError("reference precompute did not cover every record")
    return table


def _gather(x):
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _gather_host(x):
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x)).reshape(-1)  # rows in order


def reference_table(cfg, model, params_fn, records, template, tokenizer, split, mesh, rules):
    """Cached ``compute_table``; ``params_fn()`` gives the reference params when needed."""
    key = table_key(cfg, records, tokenizer, split, reference_id(cfg))
    directory = os.path.join(cfg.data.data_dir or default_data_dir(), "reference_logps")
    path = os.path.join(directory, f"{key}.npy")
    if os.path.exists(path):
        table = np.load(path)
        if len(table) == len(records.source(split)):
            return table
    table = compute_table(cfg, model, params_fn(), records, template, split, mesh, rules)
    if is_writer():
        buffer = io.BytesIO()
        np.save(buffer, table)
        atomic_write(path, buffer.getvalue())
    return table
