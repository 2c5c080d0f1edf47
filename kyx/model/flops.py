"""Training FLOPs per token, counted as matmul FLOPs (MaxText's convention).

Forward matmul FLOPs per token = 2 x (weights used in matmuls) + attention scores and
values, 2 x 2 x seq_len x (heads x head_dim) per layer, halved because causal attention
only needs the lower triangle. Embedding lookup is free; the output head is a matmul.
Training = 3 x forward (backward costs twice the forward).

Other attention kinds (model.attention) count their own projections and attention work
(kyx/model/mixers.py): "swa" the mean visible keys of its window; "pla" / "linear" the
matmuls of the chunked scan (intra-block scores and values, state read and update; PLA
3 scans), an approximation that ignores the Taylor feature map's elementwise work.
"""
from __future__ import annotations

from kyx.model.config import ModelConfig
from kyx.model.mixers import MIXERS


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in matmuls for one token (head included, lookup excluded).

    An MoE layer counts its router, the top-k routed experts and the shared experts (the
    *active* parameters), not all experts.
    """
    d = cfg.d_model
    attn = sum(MIXERS.get(kind).matmul_params(cfg) for kind in cfg.layer_kinds)
    dense_mlp = 3 * d * cfg.hidden_dim
    n_moe = len(cfg.moe_layer_ids)
    moe_mlp = (d * cfg.moe_num_experts
               + 3 * d * cfg.expert_dim * (cfg.moe_top_k + cfg.moe_shared_experts))
    return (attn + (cfg.num_layers - n_moe) * dense_mlp + n_moe * moe_mlp
            + cfg.vocab_size * d)


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """QK^T and AV for one token, causal-halved: 2 * 2 * T * H * D / 2 per softmax layer
    (other kinds: their ``flops`` in kyx/model/mixers.py)."""
    return sum(MIXERS.get(kind).flops(cfg, seq_len) for kind in cfg.layer_kinds)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    forward = 2.0 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)
    return 3.0 * forward
