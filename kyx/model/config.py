"""Decoder hyper-parameters: the defaults (as a ConfigDict) and a frozen dataclass view."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import ml_collections

from kyx.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
    """Model defaults; every field of `ModelConfig` is present so overrides can reach it."""
    return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 0          # 0 means = num_heads (MHA); 1 is MQA; else GQA
    head_dim: int = 0              # 0 means d_model // num_heads
    ffn_dim: int = 0               # 0 means the SwiGLU rule ceil(8/3 d / ffn_multiple) * ffn_multiple
    ffn_multiple: int = 128
    max_seq_len: int = 2048        # longest sequence / KV cache the model is built for
    position: str = "rope"         # "rope" | "alibi"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    norm_head: bool = False        # Baichuan 2 NormHead: L2-normalise each vocab row of the head
    tie_embeddings: bool = False
    init_std: float = 0.02
    dtype: str = "float32"         # compute dtype; params are always float32
    remat: str = "none"            # "none" | "full" | "dots" | "dots_no_batch"

    # ------------------------------------------------------------------ derived sizes
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim or swiglu_hidden_dim(self.d_model, self.ffn_multiple)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    def validate(self) -> "ModelConfig":
        if self.num_heads % self.kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be a multiple of "
                f"model.num_kv_heads={self.kv_heads} (grouped-query attention)")
        if not self.head_dim and self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads}; set model.head_dim explicitly")
        if self.position not in ("rope", "alibi"):
            raise ConfigError(f"model.position must be 'rope' or 'alibi', got {self.position!r}")
        if self.position == "rope" and self.dim_per_head % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
        if self.norm_head and self.tie_embeddings:
            raise ConfigError("model.norm_head needs untied embeddings (NormHead would also "
                              "normalise the input embeddings); set model.tie_embeddings=False")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")
        return self

    @classmethod
    def from_config(cls, cfg) -> "ModelConfig":
        """Build from a ConfigDict/dict, rejecting unknown keys."""
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - fields
        if extra:
            raise ConfigError(f"unknown model config keys {sorted(extra)}; valid: {sorted(fields)}")
        return cls(**d).validate()


REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def swiglu_hidden_dim(d_model: int, multiple: int = 128) -> int:
    """Baichuan 2 / LLaMA SwiGLU sizing: 8/3 d rounded up to a multiple (4096 -> 11008)."""
    return int(math.ceil(8 * d_model / 3 / multiple) * multiple)
