"""`init_from`: start a run from another workdir's (or an HF directory's) params; the
optimizer state is fresh. The source's architecture and tokenizer are adopted first."""
from __future__ import annotations

from typing import Any, Callable

from kyx import sharding
from kyx.interop import sources
from kyx.logs import get_logger

log = get_logger(__name__)

# Model fields that fix parameter shapes or the function the params compute; a run that
# starts from another workdir's params must use the source's values.
ARCH_FIELDS = (
    "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "position", "rope_theta", "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_original_max_len", "qkv_bias", "norm_eps", "norm_head",
    "tie_embeddings", "moe_num_experts", "moe_top_k", "moe_ffn_dim", "moe_shared_experts",
    "moe_every", "moe_first_dense", "moe_norm_topk", "moe_router_input")


def load_params(cfg, module, name: str | None = None):
    """``module`` params from ``cfg.init_from``, placed on the run's mesh."""
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    return sources.load_params(cfg.init_from, module, mesh, rules, name=name)


def params_loader(cfg, module) -> Callable[[], Any] | None:
    """A zero-argument loader for ``ModelSpec.init``, or None when `init_from` is unset."""
    if not cfg.get("init_from"):
        return None
    return lambda: load_params(cfg, module)


def adopt_source(cfg) -> list[str]:
    """With `init_from`, take the source's architecture and tokenizer into `cfg`.

    Shape-defining model fields (ARCH_FIELDS, plus the FFN width) come from the source;
    the data pipeline uses the source's tokenizer unless one is set explicitly. Returns
    the adopted `model.*` keys whose values changed. Idempotent.
    """
    source = cfg.get("init_from")
    if not source:
        return []
    src = sources.model_config(source)
    changed = []
    with cfg.unlocked():
        for key in ARCH_FIELDS + ("ffn_dim",):
            value = src.hidden_dim if key == "ffn_dim" else getattr(src, key)
            if key in cfg.model and cfg.model[key] != value:
                changed.append(f"model.{key}: {cfg.model[key]} -> {value}")
                cfg.model[key] = value
        if "data" in cfg and not cfg.data.tokenizer.model_path:
            path = sources.tokenizer_path(source)
            if path:
                cfg.data.tokenizer.model_path = path
    if changed:
        log.info("init_from: adopted the source architecture: %s", "; ".join(changed))
    return changed
