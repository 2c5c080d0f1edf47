"""Model sources: a kyx workdir or a Hugging Face model directory, read the same way.

``init_from``, ``kyx.load`` and the reward / reference models of post-training name a
source by path; these functions give its ModelConfig, params and tokenizer location
without the caller checking which kind it is.
"""
from __future__ import annotations

import os

from kyx.checkpoint import workdir as workdir_lib
from kyx.errors import CheckpointError
from kyx.interop import hf, hf_dir
from kyx.model.config import ModelConfig


def model_config(source: str) -> ModelConfig:
    """The ModelConfig of a kyx workdir or an HF model directory."""
    if hf_dir.is_hf_dir(source):
        return hf_dir.hf_model_config(source)[0]
    if not os.path.exists(os.path.join(source, "config.json")):
        raise CheckpointError(f"{source!r} is neither a kyx workdir nor a Hugging Face model "
                              "directory (no config.json)")
    cfg = workdir_lib.read_config(source)
    if "model" not in cfg:
        raise CheckpointError(f"{source!r}: config.json has no model section")
    return ModelConfig.from_config(cfg.model)


def load_params(source: str, module, mesh, rules, step: int = -1, name: str | None = None):
    """Params of a source placed with ``module``'s shardings (HF dirs are streamed)."""
    if hf_dir.is_hf_dir(source):
        cfg, layout = hf_dir.hf_model_config(source)
        return hf.load_params(source, cfg, layout, mesh, rules)
    return workdir_lib.load_params(source, module, mesh, rules, step, name)


def tokenizer_path(source: str) -> str | None:
    """What ``data.tokenizer.model_path`` should name to use the source's tokenizer."""
    if os.path.exists(os.path.join(source, "tokenizer.model")):
        return os.path.join(source, "tokenizer.model")
    if os.path.exists(os.path.join(source, "tokenizer.json")):
        return source
    return None
