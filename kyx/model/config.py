"""Decoder hyper-parameters: the defaults (as a ConfigDict) and a frozen dataclass view."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import ml_collections

from kyx.errors import ConfigError
from kyx.model.attention_kernels import KERNELS
from kyx.model.mixers import MIXERS


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
    rope_scaling: str = ""         # "" | "linear" | "llama3" (long-context frequency scaling)
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0      # llama3 only
    rope_high_freq_factor: float = 4.0     # llama3 only
    rope_original_max_len: int = 8192      # llama3 only: pretraining context length
    qkv_bias: bool = False         # biases on the q/k/v projections (Qwen2)
    norm_eps: float = 1e-6
    norm_head: bool = False        # Baichuan 2 NormHead: L2-normalise each vocab row of the head
    tie_embeddings: bool = False
    init_std: float = 0.02
    dtype: str = "float32"         # compute dtype: matmuls and activations (norms, softmax: f32)
    # storage dtype of the parameters: created, updated and checkpointed in it, cast to
    # `dtype` at use (docs/architecture.md, "Mixed precision")
    param_dtype: str = "float32"
    remat: str = "none"            # "none" | "full" | "dots" | "dots_no_batch"
    # layers per iteration of the layer scan: 1 = a loop (smallest program), num_layers =
    # fully unrolled (no per-layer stacking of activations; faster on CPU, longer compile).
    # Parameters keep their stacked [layers, ...] layout either way (checkpoints compatible).
    scan_unroll: int = 1
    # Full-sequence attention kernel (kyx/model/attention_kernels.py): "chunked" (query blocks
    # that skip the masked upper triangle), "dense" (one [T, T] matrix), "jax"
    # (jax.nn.dot_product_attention: cuDNN fused attention on GPUs).
    attention_impl: str = "chunked"
    attention_chunks: int = 4      # query blocks of "chunked" (1 = dense; 4 was fastest on
                                   # the CPU `small` step among 2, 4, 6, 8, 16)
    # Attention kind per layer (kyx/model/mixers.py, docs/linear_attention.md): a
    # comma-separated pattern cycled over the layers, e.g. "pla,swa"; kinds softmax, swa
    # (sliding window), pla (prefix linear attention, JRT-RNN), linear (causal linear).
    attention: str = "softmax"
    attention_window: int = 0      # "swa": a query sees positions pos - window + 1 .. pos
    pla_feature_dim: int = 16      # F of the Taylor map: 1 + F + F^2 state features per head
    pla_prefix_len: int = 0        # M: tokens at position < M of their document are the prefix
    pla_chunk: int = 64            # block length of the chunked linear-attention scan

    # HunYuan attention-weight reuse (docs/moe.md): training-time probability that a layer
    # reuses the previous layer's attention probabilities (needs the 'reuse' rng stream).
    attn_reuse_prob: float = 0.0

    # Mixture of experts (docs/moe.md); moe_num_experts = 0 keeps the model dense.
    moe_num_experts: int = 0
    moe_top_k: int = 2
    moe_ffn_dim: int = 0           # expert hidden size; 0 means = hidden_dim
    moe_shared_experts: int = 0    # always-on experts of width moe_ffn_dim (DeepSeek-style)
    moe_every: int = 1             # every N-th layer (after the dense prefix) is MoE
    moe_first_dense: int = 0       # the first K layers stay dense
    moe_dispatch: str = "capacity"  # "capacity" (drops tokens) | "dropless" (ragged_dot)
    moe_capacity_factor: float = 1.25
    moe_norm_topk: bool = True     # renormalise the k selected router probabilities to sum 1
    moe_router_input: str = "hidden"  # "hidden" | "embedding" (HunYuan word-embedding routing)
    moe_router_jitter: float = 0.0  # eps: router input * U(1-eps, 1+eps) ('jitter' rng only)
    moe_aux_loss_weight: float = 1e-2   # Switch load balancing (top-k form)
    moe_z_loss_weight: float = 1e-3     # ST-MoE router z-loss
    moe_route_error_weight: float = 0.0  # lambda_re of kyx's routing-error loss; 0 = off
    moe_route_error_kappa: float = 2.0   # flag a_te > mu_e + kappa * sigma_e

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
    def expert_dim(self) -> int:
        return self.moe_ffn_dim or self.hidden_dim

    @property
    def is_moe(self) -> bool:
        return self.moe_num_experts > 0

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        """Indices of MoE layers: after `moe_first_dense`, the last of every `moe_every`."""
        if not self.is_moe:
            return ()
        k, n = self.moe_first_dense, self.moe_every
        return tuple(i for i in range(k, self.num_layers) if (i - k + 1) % n == 0)

    @property
    def attention_pattern(self) -> tuple[str, ...]:
        """The kinds of one period of the layer pattern; a pattern repeating one kind is
        that kind alone (its layers then scan as single Blocks)."""
        kinds = tuple(k.strip() for k in self.attention.split(","))
        return kinds[:1] if len(set(kinds)) == 1 else kinds

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """The attention kind of every layer (the pattern cycled)."""
        pattern = self.attention_pattern
        return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

    @property
    def is_softmax(self) -> bool:
        """Every layer is plain softmax attention (the default, HF-compatible model)."""
        return self.attention_pattern == ("softmax",)

    def require_softmax(self, what: str) -> None:
        """ConfigError unless every layer is softmax attention: ``what`` needs a KV cache of
        every layer or the plain parameter layout."""
        if not self.is_softmax:
            raise ConfigError(f"{what} needs softmax attention in every layer; "
                              f"model.attention={self.attention!r} is not supported there yet")

    @property
    def rope(self) -> tuple:
        """Hashable RoPE settings passed to the attention module."""
        return (self.rope_theta, self.rope_scaling, self.rope_scaling_factor,
                self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_max_len)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> Any:
        """The dtype parameters are stored in (``param_dtype``)."""
        return jnp.dtype(self.param_dtype)

    def validate(self) -> "ModelConfig":
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ConfigError(f"model.{key} must be one of {', '.join(DTYPES)}, got "
                                  f"{getattr(self, key)!r}")
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
        if self.rope_scaling not in ("", "linear", "llama3"):
            raise ConfigError(f"model.rope_scaling must be '', 'linear' or 'llama3', got "
                              f"{self.rope_scaling!r}")
        if self.position == "rope" and self.dim_per_head % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
        if self.norm_head and self.tie_embeddings:
            raise ConfigError("model.norm_head needs untied embeddings (NormHead would also "
                              "normalise the input embeddings); set model.tie_embeddings=False")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")
        if self.scan_unroll < 1:
            raise ConfigError(f"model.scan_unroll must be >= 1 (1 = loop over layers, "
                              f"num_layers = unrolled), got {self.scan_unroll}")
        KERNELS.get(self.attention_impl)   # ConfigError naming the choices
        if self.attention_chunks < 1:
            raise ConfigError(f"model.attention_chunks must be >= 1 (1 = one dense block), "
                              f"got {self.attention_chunks}")
        if not 0.0 <= self.attn_reuse_prob <= 1.0:
            raise ConfigError(
                f"model.attn_reuse_prob must be in [0, 1], got {self.attn_reuse_prob}")
        if self.is_moe:
            self._validate_moe()
        self._validate_attention()
        return self

    def _validate_attention(self) -> None:
        raw = tuple(k.strip() for k in self.attention.split(","))
        for kind in raw:
            check = MIXERS.get(kind).check    # an unknown kind: ConfigError naming the kinds
            if check is not None:
                check(self)
        if self.num_layers % len(raw):
            raise ConfigError(f"model.num_layers={self.num_layers} must be a multiple of the "
                              f"{len(raw)} kinds of model.attention={self.attention!r}")
        if not self.is_softmax and (self.is_moe or self.attn_reuse_prob > 0):
            raise ConfigError(f"model.attention={self.attention!r} with mixture of experts or "
                              f"attention-weight reuse (attn_reuse_prob) is not supported yet; "
                              f"use model.attention='softmax'")

    def _validate_moe(self) -> None:
        e, k = self.moe_num_experts, self.moe_top_k
        if not 1 <= k <= e:
            raise ConfigError(f"model.moe_top_k={k} must be between 1 and moe_num_experts={e}")
        if self.moe_dispatch not in MOE_DISPATCH:
            raise ConfigError(f"model.moe_dispatch must be one of {MOE_DISPATCH}, "
                              f"got {self.moe_dispatch!r}")
        if self.moe_router_input not in MOE_ROUTER_INPUTS:
            raise ConfigError(f"model.moe_router_input must be one of {MOE_ROUTER_INPUTS}, "
                              f"got {self.moe_router_input!r}")
        if self.moe_every < 1 or not 0 <= self.moe_first_dense < self.num_layers:
            raise ConfigError(f"need model.moe_every >= 1 and 0 <= moe_first_dense < num_layers, "
                              f"got moe_every={self.moe_every}, moe_first_dense="
                              f"{self.moe_first_dense}, num_layers={self.num_layers}")
        if (self.num_layers - self.moe_first_dense) % self.moe_every:
            raise ConfigError(
                f"model.num_layers - moe_first_dense = {self.num_layers - self.moe_first_dense} "
                f"must be a multiple of moe_every={self.moe_every} (layers after the dense "
                f"prefix form super-blocks of moe_every layers, the last one MoE)")
        if self.moe_capacity_factor <= 0:
            raise ConfigError(
                f"model.moe_capacity_factor must be > 0, got {self.moe_capacity_factor}")
        if self.moe_route_error_weight and e < 2:
            raise ConfigError("model.moe_route_error_weight needs at least 2 experts")

    @classmethod
    def from_config(cls, cfg) -> "ModelConfig":
        """Build from a ConfigDict/dict, rejecting unknown keys."""
        d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - fields
        if extra:
            raise ConfigError(f"unknown model config keys {sorted(extra)}; valid: {sorted(fields)}")
        return cls(**d).validate()


DTYPES = ("float32", "bfloat16", "float16")   # model.dtype and model.param_dtype
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
MOE_DISPATCH = ("capacity", "dropless")
MOE_ROUTER_INPUTS = ("hidden", "embedding")


def swiglu_hidden_dim(d_model: int, multiple: int = 128) -> int:
    """Baichuan 2 / LLaMA SwiGLU sizing: 8/3 d rounded up to a multiple (4096 -> 11008)."""
    return int(math.ceil(8 * d_model / 3 / multiple) * multiple)
