"""Model sources: a kyx workdir or a Hugging Face model directory, read the same way.

``init_from``, ``kyx.load`` and the reward / reference models of post-training name a
source by path; these functions give its ModelConfig, params and tokenizer location
without the caller checking which kind it is.
"""
from __future__ import annotations

import os

from kyx.checkpoint import workdir as workdir_lib
from kyx.data import hf_tokenizer
from kyx.errors import CheckpointError, ConfigError
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


def run_config(source: str):
    """A kyx workdir's resolved config (its chat template choice, ...); None for an HF
    directory."""
    return None if hf_dir.is_hf_dir(source) else workdir_lib.read_config(source)


def tokenizer_path(source: str) -> str:
    """What ``data.tokenizer.model_path`` should name to use the source's tokenizer: the
    directory when it has Hugging Face tokenizer metadata (tokenizer.json, or
    tokenizer_config.json with the chat template and special tokens) or a kyx BPE
    tokenizer (tokenizer.bpe.json), else its
    tokenizer.model. A source without a tokenizer is an error (a run would otherwise
    train a new tokenizer whose ids mean nothing to the source's weights)."""
    if not hf_tokenizer.has_tokenizer(source):
        raise ConfigError(f"init_from {source!r} has no tokenizer (tokenizer.model or "
                          "tokenizer.json): set data.tokenizer.model_path to the model's "
                          "tokenizer, or " + hf_tokenizer.ADD_TOKENIZER.format(dir=source))
    if any(os.path.exists(os.path.join(source, n))
           for n in (hf_tokenizer.JSON_FILE, hf_tokenizer.CONFIG_FILE, hf_tokenizer.BPE_FILE)):
        return source
    return os.path.join(source, hf_tokenizer.SP_FILE)
