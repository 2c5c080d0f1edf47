"""`init_from`: start a run from another workdir's params (optimizer state is fresh)."""
from __future__ import annotations

import os

import jax

from kyx import sharding
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import CheckpointError
from kyx.model.config import ModelConfig
from kyx.model.params import param_shardings
from kyx.train.state import with_shardings


def load_params(workdir: str, model, mesh, rules, step: int = -1):
    """Params of `workdir`'s newest (or given) checkpoint, placed with the model's shardings.

    A Hugging Face model directory is imported (streamed) instead."""
    from kyx.interop import convert, hf, hf_layouts

    if convert.is_hf_dir(workdir):
        cfg, layout = hf_layouts.model_config_from_hf(hf.read_hf_config(workdir))
        return hf.load_params(workdir, cfg, layout, mesh, rules)
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"init_from={workdir!r} has no checkpoints/ directory")
    ckpt = Checkpointer(directory, read_only=True)
    steps = ckpt.steps()
    if not steps:
        raise CheckpointError(f"init_from={workdir!r} contains no checkpoint")
    shardings, abstract = param_shardings(model, mesh, rules)
    target = with_shardings(abstract, shardings)
    candidates = [step] if step >= 0 else list(reversed(steps))
    last_error = None
    for s in candidates:
        try:
            return ckpt.restore_params(s, target)
        except CheckpointError as e:
            print(f"WARNING: {e}; trying an earlier checkpoint", flush=True)
            last_error = e
    raise last_error


def params_loader(cfg, model):
    """A zero-argument loader for the loop, or None when `init_from` is unset."""
    if not cfg.get("init_from"):
        return None

    def load():
        rules = sharding.get_rules(cfg.mesh.rules)
        mesh = sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES})
        return load_params(cfg.init_from, model, mesh, rules)
    return load


# Model fields that fix parameter shapes or the function the params compute; a run that
# starts from another workdir's params must use the source's values.
ARCH_FIELDS = (
    "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "position", "rope_theta", "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_original_max_len", "qkv_bias", "norm_eps", "norm_head",
    "tie_embeddings", "moe_num_experts", "moe_top_k", "moe_ffn_dim", "moe_shared_experts",
    "moe_every", "moe_first_dense", "moe_norm_topk", "moe_router_input")


def source_model_config(source: str) -> ModelConfig:
    """The ModelConfig of a kyx workdir or a Hugging Face model directory."""
    from kyx import config as config_lib
    from kyx.interop import convert, hf, hf_layouts

    if convert.is_hf_dir(source):
        return hf_layouts.model_config_from_hf(hf.read_hf_config(source))[0]
    path = os.path.join(source, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"init_from={source!r} is neither a kyx workdir nor a Hugging "
                              "Face model directory (no config.json)")
    return ModelConfig.from_config(config_lib.load_json(path).model)


def adopt_source(cfg) -> list[str]:
    """With `init_from`, take the source's architecture and tokenizer into `cfg`.

    Shape-defining model fields (ARCH_FIELDS, plus the FFN width) come from the source;
    the data pipeline uses the source's tokenizer unless one is set explicitly. Returns
    the adopted `model.*` keys whose values changed.
    """
    source = cfg.get("init_from")
    if not source:
        return []
    src = source_model_config(source)
    changed = []
    with cfg.unlocked() if hasattr(cfg, "unlocked") else _nullcontext():
        for key in ARCH_FIELDS + ("ffn_dim",):
            value = src.hidden_dim if key == "ffn_dim" else getattr(src, key)
            if key in cfg.model and cfg.model[key] != value:
                changed.append(f"model.{key}: {cfg.model[key]} -> {value}")
                cfg.model[key] = value
        if "data" in cfg and not cfg.data.tokenizer.model_path:
            if os.path.exists(os.path.join(source, "tokenizer.model")):
                cfg.data.tokenizer.model_path = os.path.join(source, "tokenizer.model")
            elif os.path.exists(os.path.join(source, "tokenizer.json")):
                cfg.data.tokenizer.model_path = source
    if changed:
        print("init_from: adopted the source architecture: " + "; ".join(changed), flush=True)
    return changed


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
