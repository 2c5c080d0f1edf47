"""Workdir <-> Hugging Face directory conversion (`kyx convert`).

A converted workdir holds `config.json` (a full pretraining config whose `model` section
comes from the HF config, plus `interop.layout`), the tokenizer files and an Orbax
checkpoint at step 0 with the params, so `kyx sample`, `kyx.load` and `init_from` accept it.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from kyx import config as config_lib
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import ConfigError
from kyx.interop import hf, hf_layouts
from kyx.interop.hf_tokenizer import load_tokenizer
from kyx.model.config import ModelConfig


def is_hf_dir(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.exists(cfg):
        return False
    with open(cfg) as f:
        return "model_type" in json.load(f)


def from_hf(hf_dir: str, workdir: str, mesh=None, rules="fsdp") -> str:
    from kyx.train.pretrain import default_config

    hf_cfg = hf.read_hf_config(hf_dir)
    model_cfg, layout = hf_layouts.model_config_from_hf(hf_cfg)
    params = hf.load_params(hf_dir, model_cfg, layout, mesh, rules)
    tokenizer = load_tokenizer(hf_dir)
    cfg = default_config()
    for key, value in vars(model_cfg).items():
        cfg.model[key] = value
    cfg.data.tokenizer.vocab_size = tokenizer.vocab_size
    cfg.interop = ml_collections.ConfigDict({"layout": layout, "source": os.path.abspath(hf_dir)})
    os.makedirs(workdir, exist_ok=True)
    config_lib.dump(cfg, os.path.join(workdir, "config.json"))
    hf.copy_tokenizer_files(hf_dir, workdir)
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
           "pad_token_id": tokenizer.pad_id}
    with open(os.path.join(workdir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in ids.items() if v is not None}, f)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(0, {"params": params}, {}, cfg.to_dict(), force=True)
    ckpt.close()
    return workdir


def default_layout(cfg: ModelConfig) -> str:
    return "baichuan" if cfg.norm_head or cfg.position == "alibi" else (
        "qwen2" if cfg.qkv_bias else "llama")


def to_hf(workdir: str, out_dir: str, layout: str | None = None) -> str:
    from kyx.api import load

    loaded = load(workdir)
    cfg = loaded.model.cfg
    layout = layout or loaded.config.get("interop", {}).get("layout") or default_layout(cfg)
    if layout not in hf_layouts.LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {hf_layouts.LAYOUTS}")
    tok = loaded.tokenizer
    hf.save_params(loaded.params, cfg, layout, out_dir, bos_id=tok.bos_id, eos_id=tok.eos_id)
    hf.copy_tokenizer_files(workdir, out_dir)
    return out_dir


def params_equal(a, b) -> bool:
    return all(bool((jax.numpy.asarray(x) == jax.numpy.asarray(y)).all())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
