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


def test_attention_kinds_hand_count():
    base = dict(vocab_size=100, d_model=8, num_layers=2, num_heads=2, num_kv_heads=1,
                ffn_dim=16)
    softmax = ModelConfig(**base)
    # pla layer: q, k, k_enc 8 x (2 x 4) (F = 4); v, v_enc 8 x (2 x 4); o (2 x 4) x 8 = 384
    hybrid = ModelConfig(**base, attention="pla,swa", pla_prefix_len=4, pla_feature_dim=4,
                         pla_chunk=8, attention_window=4).validate()
    assert matmul_params(hybrid) == matmul_params(softmax) - 192 + 384
    # swa at T = 10, W = 4: 4 * (4 - 16 / 20) * 8 = 102.4; pla: 3 scans x 2 heads x
    # 2 (P C + C D + 2 P D) with P = 21, C = 8, D = 4: 6 * 2 * 368 = 4416
    fwd = 2 * matmul_params(hybrid) + 102.4 + 4416
    assert abs(train_flops_per_token(hybrid, 10) - 3 * fwd) < 1e-6
