"""FLOP accounting against hand-counted values."""
from kyx.model import ModelConfig
from kyx.model.flops import matmul_params, train_flops_per_token


def test_dense_flops_hand_count():
    cfg = ModelConfig(vocab_size=100, d_model=8, num_layers=2, num_heads=2, num_kv_heads=1,
                      ffn_dim=16)
    # per layer: q 8x8, k 8x4, v 8x4, o 8x8 = 192; mlp 3 x 8 x 16 = 384; head 100 x 8
    assert matmul_params(cfg) == 2 * (192 + 384) + 800
    # attention: 2 layers x 2 x T x heads x head_dim (QK^T + AV, causal-halved)
    assert train_flops_per_token(cfg, 10) == 3 * (2 * 1952 + 2 * 2 * 10 * 8)


def test_moe_counts_active_experts_only():
    cfg = ModelConfig(vocab_size=100, d_model=8, num_layers=2, num_heads=2, num_kv_heads=1,
                      ffn_dim=16, moe_num_experts=8, moe_top_k=2, moe_every=2)
    # layer 1 is MoE: router 8 x 8 + 2 experts x 3 x 8 x 16
    assert matmul_params(cfg) == 2 * 192 + 384 + (64 + 2 * 384) + 800
