"""The files of a Hugging Face model directory: config.json and the safetensors tensors.

Everything here fails loudly with a CheckpointError naming the file and what to do: a
missing or unparseable config.json or index, a shard the index names but the directory
lacks, a truncated or corrupt safetensors file, and an index that disagrees with its
shards. `check_names` makes an import strict: every tensor in the files is used by the
model or listed in `hf_layouts.IGNORED_TENSORS`, and every tensor the model needs is there.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

import numpy as np

from kyx.errors import CheckpointError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers",
                        "num_attention_heads", "intermediate_size")
REDOWNLOAD = "download the model again, e.g. `huggingface-cli download REPO --local-dir DIR`"


def has_weights(model_dir: str) -> bool:
    return any(os.path.exists(os.path.join(model_dir, n)) for n in (INDEX, SINGLE))


def read_hf_config(model_dir: str) -> dict:
    """config.json of an HF directory, with the keys kyx needs to build the model."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        held = "holds safetensors weights but " if has_weights(model_dir) else ""
        raise CheckpointError(f"{model_dir!r} {held}has no config.json; a Hugging Face model "
                              "directory needs the config.json it was saved with: copy it "
                              f"from the model's source, or {REDOWNLOAD}")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; {REDOWNLOAD}")
    if "model_type" not in data and "architectures" not in data:
        raise CheckpointError(f"{path} is not a Hugging Face config (no model_type); is "
                              f"{model_dir!r} a Hugging Face model directory?")
    absent = [k for k in REQUIRED_CONFIG_KEYS if k not in data]
    if absent:
        raise CheckpointError(f"{path} has no {', '.join(map(repr, absent))}; kyx needs "
                              f"{', '.join(REQUIRED_CONFIG_KEYS)} to build the model")
    bad = [f"{k}={data[k]!r}" for k in REQUIRED_CONFIG_KEYS
           if type(data[k]) is not int or data[k] <= 0]
    if bad:
        raise CheckpointError(f"{path}: {', '.join(bad)} must be positive integers")
    return data


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); it is truncated or damaged: "
                              f"{REDOWNLOAD}") from None


class SafetensorsReader:
    """Lazy tensor access across a single file or an indexed set of shards.

    All files are opened (memory-mapped, headers checked) up front, so a missing, truncated
    or inconsistent shard is reported before any tensor is read."""

    def __init__(self, model_dir: str):
        self.dir = model_dir
        index = os.path.join(model_dir, INDEX)
        if os.path.exists(index):
            data = _read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map or not all(
                    isinstance(f, str) for f in weight_map.values()):
                raise CheckpointError(f"{index} has no valid weight_map; {REDOWNLOAD}")
        elif os.path.exists(os.path.join(model_dir, SINGLE)):
            weight_map = {}
        else:
            raise CheckpointError(f"{model_dir!r} has no {SINGLE} or {INDEX} "
                                  "(only safetensors checkpoints are supported)")
        files = sorted(set(weight_map.values())) or [SINGLE]
        absent = [f for f in files if not os.path.exists(os.path.join(model_dir, f))]
        if absent:
            raise CheckpointError(
                f"{_few(absent)} missing from {model_dir} ({len(absent)} of the {len(files)} "
                f"shards that {INDEX} names); the download is incomplete: {REDOWNLOAD}")
        self._files = {f: self._open(f) for f in files}
        held = {f: set(handle.keys()) for f, handle in self._files.items()}
        self.where: dict[str, str] = {}
        for fname, keys in held.items():   # tensors that no index entry names
            self.where.update({k: fname for k in keys if k not in weight_map})
        wrong = [f"{k} (in {f})" for k, f in weight_map.items() if k not in held[f]]
        if wrong:
            raise CheckpointError(f"{index} names {len(wrong)} tensors that its shards do not "
                                  f"hold: {_few(wrong)}; the index and shards come from different "
                                  f"downloads: {REDOWNLOAD}")
        self.where.update(weight_map)

    def _open(self, fname: str):
        from safetensors import SafetensorError, safe_open

        path = os.path.join(self.dir, fname)
        try:
            return safe_open(path, "numpy")
        except SafetensorError as e:
            raise CheckpointError(f"{path} is truncated or corrupt ({e}); {REDOWNLOAD}") from None
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None

    def names(self) -> Iterable[str]:
        return self.where.keys()

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self.where:
            raise CheckpointError(f"tensor {name!r} is missing from {self.dir}"
                                  + (f" (expected shape {tuple(shape)})" if shape else ""))
        from safetensors import SafetensorError

        fname = self.where[name]
        try:
            x = self._files[fname].get_tensor(name)
        except (SafetensorError, OSError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot read tensor {name!r} from "
                                  f"{os.path.join(self.dir, fname)}: {e}") from None
        return _hf_tensor(name, np.asarray(x, np.float32), shape)


class DictReader:
    """The reader interface over an in-memory {name: array} state dict."""

    def __init__(self, state_dict):
        self.sd, self.dir = state_dict, "<state dict>"

    def names(self) -> Iterable[str]:
        return self.sd.keys()

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self.sd:
            raise CheckpointError(f"tensor {name!r} is missing"
                                  + (f" (expected shape {tuple(shape)})" if shape else ""))
        return _hf_tensor(name, np.asarray(self.sd[name], dtype=np.float32), shape)


def _hf_tensor(name: str, x: np.ndarray, shape) -> np.ndarray:
    """`x`, or a CheckpointError naming the HF tensor when its shape is not `shape`."""
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(x.shape)}, "
                              f"expected {tuple(shape)}")
    return x


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _layers(names) -> list[int]:
    found = (re.match(r"model\.layers\.(\d+)\.", n) for n in names)
    return sorted({int(m.group(1)) for m in found if m})


def check_names(reader, needed: set[str], num_layers: int, ignored: Iterable[str],
                copies: dict[str, str]) -> None:
    """Fail unless the reader's tensors are exactly `needed`, apart from names matching an
    `ignored` pattern and `copies` (name -> the needed tensor it must equal, e.g. a tied
    lm_head saved next to the embedding)."""
    present = set(reader.names())
    missing = needed - present
    if missing:
        held, lacking = _layers(present), _layers(missing)
        hint = (f"; config.json says num_hidden_layers={num_layers} but the files hold "
                f"{len(held)}" if lacking and min(lacking) > max(held or [-1]) else "")
        raise CheckpointError(f"{reader.dir}: {len(missing)} tensors the model needs are "
                              f"missing: {_few(missing)}{hint}. The files do not match "
                              f"config.json, or the download is incomplete: {REDOWNLOAD}")
    ignored = [re.compile(p) for p in ignored]
    extra = {n for n in present - needed if not any(p.fullmatch(n) for p in ignored)}
    for name in sorted(extra & set(copies)):
        if not np.array_equal(reader.get(name), reader.get(copies[name])):
            raise CheckpointError(
                f"{reader.dir}: {name} differs from {copies[name]} although config.json says "
                "tie_word_embeddings=true, so kyx would ignore it; set tie_word_embeddings to "
                "false if the head is trained separately")
        extra.discard(name)
    if extra:
        beyond = [i for i in _layers(extra) if i >= num_layers]
        hint = (f"; config.json says num_hidden_layers={num_layers} but the files hold "
                f"tensors of layer(s) {_few(map(str, beyond), 3)}" if beyond else "")
        raise CheckpointError(
            f"{reader.dir}: {len(extra)} unexpected tensors that the model of config.json would "
            f"not use: {_few(extra)}{hint}. Fix config.json so it describes these files, or "
            "remove the tensors (known-harmless extras are listed in "
            "kyx/interop/hf_layouts.py IGNORED_TENSORS)")
