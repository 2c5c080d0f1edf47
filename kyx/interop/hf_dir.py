"""A Hugging Face model directory as a whole: detect it, read its ModelConfig, load it.

The one owner of "HF dir -> (ModelConfig, params, tokenizer)": ``kyx.load``, ``init_from``
and ``kyx convert`` all come through here (kyx/interop/sources.py for "kyx workdir or
HF dir").
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from kyx.interop import hf, hf_files, hf_layouts
from kyx.data.hf_tokenizer import has_tokenizer, load_tokenizer
from kyx.model.config import ModelConfig


@dataclasses.dataclass
class HFModel:
    config: ModelConfig
    params: Any          # jax Arrays placed with the model's shardings
    tokenizer: Any       # None for a weights-only directory (no tokenizer files)
    layout: str          # llama | mistral | qwen2 | baichuan (kyx/interop/hf_layouts.py)


def is_hf_dir(path: str) -> bool:
    """A directory whose config.json is a transformers config (it names a model_type), or
    that holds safetensors weights and no kyx checkpoints/ (its config.json missing or
    damaged: loading it then says so)."""
    cfg = os.path.join(path, "config.json")
    if hf_files.has_weights(path) and not os.path.isdir(os.path.join(path, "checkpoints")):
        return True
    if not os.path.exists(cfg):
        return False
    try:
        with open(cfg) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def hf_model_config(hf_dir: str) -> tuple[ModelConfig, str]:
    """(kyx ModelConfig, layout) of an HF directory, from its config.json."""
    return hf_layouts.model_config_from_hf(hf_files.read_hf_config(hf_dir))


def load_hf_params(hf_dir: str, mesh=None, rules="fsdp") -> tuple[ModelConfig, Any, str]:
    """(ModelConfig, params streamed onto the mesh, layout)."""
    cfg, layout = hf_model_config(hf_dir)
    return cfg, hf.load_params(hf_dir, cfg, layout, mesh, rules), layout


def load_hf_model(hf_dir: str, mesh=None, rules="fsdp") -> HFModel:
    """Config, params (streamed onto ``mesh``; default one device) and tokenizer (None
    when the directory holds only config.json and weights)."""
    cfg, params, layout = load_hf_params(hf_dir, mesh, rules)
    tokenizer = load_tokenizer(hf_dir) if has_tokenizer(hf_dir) else None
    return HFModel(cfg, params, tokenizer, layout)
