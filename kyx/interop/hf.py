"""Import and export Llama-family Hugging Face checkpoints (safetensors) for kyx.

Import streams weights: every kyx parameter is created with `jax.make_array_from_callback`
on its target sharding, and each device's callback reads only the HF tensors of the layers
its shard covers, converting one layer tensor at a time. Peak host memory is therefore
about one HF tensor plus one device shard, so a model larger than one host's memory can
be imported onto a mesh. The import is strict (kyx/interop/hf_files.py): every tensor in
the files is used or allow-listed, and every needed one is there. Export gathers one
parameter at a time and writes safetensors shards of at most `max_shard_bytes` with an index.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from kyx import sharding
from kyx.data.hf_tokenizer import TOKENIZER_FILES
from kyx.distributed import is_writer
from kyx.errors import CheckpointError, ConfigError
from kyx.fileio import atomic_write, read_checked
from kyx.interop import hf_layouts
from kyx.interop.hf_files import (INDEX, SINGLE, DictReader, SafetensorsReader,  # noqa: F401
                                  check_names)
from kyx.model.config import ModelConfig
from kyx.model.params import param_shardings
from kyx.model.transformer import Decoder


def load_params(model_dir, cfg: ModelConfig, layout: str, mesh=None, rules="fsdp"):
    """Params of an HF directory (or a DictReader) as jax Arrays placed with the model's
    shardings."""
    mesh = mesh or sharding.single_device_mesh()
    rules = sharding.get_rules(rules)
    shardings, abstract = param_shardings(Decoder(cfg), mesh, rules)
    reader = model_dir if isinstance(model_dir, DictReader) else SafetensorsReader(model_dir)
    check_names(reader, hf_layouts.needed_names(cfg, layout), cfg.num_layers,
                hf_layouts.IGNORED_TENSORS, hf_layouts.tied_copies(cfg))
    specs = hf_layouts.leaves(cfg, layout)
    flat_abstract = {tuple(k.key for k in path): leaf for path, leaf in
                     jax.tree_util.tree_flatten_with_path(abstract)[0]}
    flat_sh = {tuple(k.key for k in path): leaf for path, leaf in
               jax.tree_util.tree_flatten_with_path(shardings)[0]}
    unknown = set(flat_abstract) - set(specs)
    if unknown:
        raise ConfigError(f"no Hugging Face tensor maps to kyx params {sorted(unknown)}")
    out = {}
    for path, leaf in flat_abstract.items():
        spec = specs[path]

        def read(index, spec=spec, leaf=leaf, path=path):
            if not spec.stacked:
                return _checked(spec.to_kyx(reader.get(spec.names, spec.hf_shape)), leaf.shape[0:],
                                path)[index]
            layers = range(leaf.shape[0])[index[0]]
            parts = [_checked(spec.to_kyx(reader.get(spec.names(i), spec.hf_shape)),
                              leaf.shape[1:], path) for i in layers]
            return np.stack(parts)[(slice(None),) + tuple(index[1:])]

        out[path] = jax.make_array_from_callback(leaf.shape, flat_sh[path], read)
    return _unflatten(out)


def _checked(x: np.ndarray, shape, path) -> np.ndarray:
    if tuple(x.shape) != tuple(shape):
        raise CheckpointError(f"kyx param {'/'.join(path)} would have shape {tuple(x.shape)}, "
                              f"expected {tuple(shape)}")
    return x


def _unflatten(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def save_params(params, cfg: ModelConfig, layout: str, out_dir: str,
                max_shard_bytes: int = 2 << 30, bos_id=None, eos_id=None) -> list[str]:
    """Write params as HF safetensors (+ index when sharded) and config.json; returns the
    weight files (in a run of several processes, all take part and process 0 writes)."""
    from safetensors.numpy import save_file

    cfg.require_softmax("Hugging Face export")
    writer = is_writer()  # every process gathers the tensors below; process 0 writes them
    if writer:
        os.makedirs(out_dir, exist_ok=True)

    def get(path, layer):
        node = params
        for key in path:
            node = node[key]
        x = node if layer is None else node[layer]
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # other hosts' shards
            x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x), dtype=np.float32)

    shards, current, size = [], {}, 0
    for name, tensor in hf_layouts.export_tensors(cfg, layout, get):
        tensor = np.ascontiguousarray(tensor)
        if current and size + tensor.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += tensor.nbytes
    shards.append(current)
    if not writer:
        return []
    files = []
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, SINGLE), metadata={"format": "pt"})
        files.append(SINGLE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
            files.append(fname)
        total = sum(t.nbytes for s in shards for t in s.values())
        with open(os.path.join(out_dir, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_layouts.hf_config_from_model(cfg, layout, bos_id, eos_id), f, indent=2)
    _remove_stale_weights(out_dir, files + ([INDEX] if len(files) > 1 else []))
    return files


def _remove_stale_weights(out_dir: str, written: list[str]) -> None:
    """Delete weight files of an earlier export into `out_dir` (an old index or shards
    would otherwise be read instead of, or next to, the new files)."""
    pattern = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")
    for name in os.listdir(out_dir):
        if pattern.fullmatch(name) and name not in written:
            os.remove(os.path.join(out_dir, name))


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    """Copy the tokenizer files of ``src`` that exist, verified against their ``.sha256``
    sidecars (kyx workdirs) and written with new ones."""
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            atomic_write(os.path.join(dst, name), read_checked(os.path.join(src, name)),
                         checksum=True)
            copied.append(name)
    return copied
