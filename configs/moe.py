"""Mixture-of-experts pretraining on the embedded corpus (docs/moe.md).

Train the tiny preset (8 experts, top-2, every layer MoE; a few minutes on 2 CPU cores):

    kyx train --config configs/moe.py:tiny --workdir runs/moe_tiny

Warm start from a dense run (sparse upcycling, HunYuan's 1 -> E expert curriculum):

    kyx train --config configs/pretrain.py:tiny --workdir runs/tiny
    kyx upcycle --workdir runs/tiny --out runs/tiny_8e --num-experts 8 --top-k 2
    kyx train --config configs/moe.py:tiny --workdir runs/moe_up \
        --config.init_from=runs/tiny_8e --config.optim.warmup_steps=20

Ablation (load balance only vs + kyx's routing-error loss, same seed and steps):

    python experiments/sweep.py --config configs/moe.py:tiny --sweep sweep \
        --root runs/moe_ablation --steps 300

Presets: tiny (CPU), small (the CPU benchmark size: same active parameters as the dense
pretrain `small`), 64e (accelerator mesh: 64 experts top-2 + 2 shared, ~1B active /
10B total, bf16, expert parallelism with the `ep` rules), e.g.

    kyx train --config configs/moe.py:64e --workdir $RUN --config.mesh.expert=8
"""
import importlib.util
import os

import ml_collections

from kyx import config as config_lib
from kyx.train import pretrain



def _dense_presets() -> dict:
    """configs/pretrain.py's PRESETS (the MoE presets reuse the dense shapes)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
    spec = importlib.util.spec_from_file_location("_kyx_configs_pretrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS


_PRETRAIN = _dense_presets()

PRESETS = {
    # Dense tiny shape (so `kyx upcycle --num-experts 8` of a pretrain.py:tiny run fits):
    # 8 experts of the full FFN width, top-2, every layer, capacity dispatch.
    "tiny": _PRETRAIN["tiny"] | dict(model=_PRETRAIN["tiny"]["model"] | dict(
        moe_num_experts=8, moe_top_k=2, moe_every=1, moe_dispatch="capacity",
        moe_capacity_factor=1.25)),
    # Dense small with each 1408-wide FFN split into top-2 of 8 experts of width 704:
    # active FFN parameters equal the dense model's (plus a 512 x 8 router per layer).
    "small": _PRETRAIN["small"] | dict(model=_PRETRAIN["small"]["model"] | dict(
        moe_num_experts=8, moe_top_k=2, moe_ffn_dim=704, moe_every=1,
        moe_dispatch="capacity", moe_capacity_factor=1.25)),
    # The dense 1b shape with fine-grained experts: 64 x 1408 routed (top-2) + 2 shared
    # per layer after one dense layer; active FFN width 4 x 1408 ~ the dense 5504.
    "64e": dict(model=dict(d_model=2048, num_layers=18, num_heads=16, num_kv_heads=8,
                           vocab_size=32768, max_seq_len=2048, dtype="bfloat16",
                           remat="dots", moe_num_experts=64, moe_top_k=2, moe_ffn_dim=1408,
                           moe_shared_experts=2, moe_first_dense=1, moe_every=1,
                           moe_dispatch="capacity", moe_capacity_factor=1.25),
                data=dict(seq_len=2048, batch_size=256, eval_batches=16,
                          tokenizer=dict(vocab_size=32768)),
                train=dict(steps=100_000, eval_every=1000, log_every=50),
                optim=dict(lr=3e-4, warmup_steps=2000),
                mesh=dict(data=1, fsdp=-1, expert=8, rules="ep")),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(pretrain.default_config(), PRESETS, arg)


def sweep() -> list[dict]:
    """The routing ablation: load balancing only vs load balancing + kyx's routing-error
    loss (docs/moe.md; lambda_re = 1e-2, kappa = 2). Same seed, data and steps; the
    z-loss is off in both so the two differ only in the routing-error term."""
    common = ["model.moe_aux_loss_weight=0.01", "model.moe_z_loss_weight=0.0"]
    return [
        {"name": "lb", "overrides": common + ["model.moe_route_error_weight=0.0"]},
        {"name": "lb_re", "overrides": common + ["model.moe_route_error_weight=0.01",
                                                 "model.moe_route_error_kappa=2.0"]},
    ]


def routing_study() -> list[dict]:
    """experiments/reproduce.py's MoE study (docs/results.md): load balancing only (the
    baseline) vs + router z-loss (ST-MoE 1e-3), + kyx's routing-error loss over a small
    (lambda, kappa) grid, HunYuan's word-embedding routing and attention-weight reuse
    (p = 0.5), and a dense -> MoE warm start at equal total steps (``prepare``:
    experiments/reproduce.py's ``upcycle_half``; experiments/sweep.py refuses this sweep).

        python experiments/reproduce.py --study moe_routing
    """
    lb = ["model.moe_aux_loss_weight=0.01", "model.moe_z_loss_weight=0.0",
          "model.moe_route_error_weight=0.0"]

    def re(lam: str, kappa: str) -> list[str]:
        return lb[:2] + [f"model.moe_route_error_weight={lam}",
                         f"model.moe_route_error_kappa={kappa}"]
    return [
        {"name": "lb", "overrides": lb},
        {"name": "lb_z", "overrides": lb[:1] + lb[2:] + ["model.moe_z_loss_weight=1e-3"]},
        {"name": "lb_re", "overrides": re("0.01", "2.0")},
        {"name": "lb_re_l0.03", "overrides": re("0.03", "2.0")},
        {"name": "lb_re_k1", "overrides": re("0.01", "1.0")},
        {"name": "embed_route", "overrides": lb + ["model.moe_router_input=embedding"]},
        {"name": "attn_reuse", "overrides": lb + ["model.attn_reuse_prob=0.5"]},
        {"name": "upcycled", "overrides": lb, "prepare": "upcycle_half"},
    ]
