"""`kyx upcycle`: a trained dense workdir -> a MoE workdir (kyx/model/upcycle.py).

    kyx upcycle --workdir DENSE --out MOE --num-experts E [--top-k 2] [--every 1]
                [--first-dense 0] [--noise 0.01] [--noise-type multiplicative|additive]
                [--router-std STD] [--dispatch capacity|dropless] [--capacity-factor F]
                [--seed 0] [--step N]

The optimizer state is not carried over (`init_from` starts a fresh one): rewarm the
learning rate.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import ml_collections

from kyx import config as config_lib
from kyx import sharding
from kyx.checkpoint import workdir as workdir_lib
from kyx.checkpoint.workdir_lock import WorkdirLock
from kyx.checkpoint.manager import Checkpointer
from kyx.errors import CheckpointError
from kyx.interop import hf
from kyx.model.config import ModelConfig
from kyx.model.params import abstract_params
from kyx.model.transformer import Decoder
from kyx.model.upcycle import NOISE_TYPES, check_tree, moe_config, upcycle_params


def upcycle_workdir(workdir: str, out: str, num_experts: int, top_k: int = 2, every: int = 1,
                    first_dense: int = 0, noise: float = 0.01,
                    noise_type: str = "multiplicative", router_std: float | None = None,
                    seed: int = 0, step: int = -1, **moe_fields) -> str:
    """Write an upcycled MoE workdir `out` (config.json, tokenizer, step-0 checkpoint)."""
    if os.path.exists(os.path.join(out, "checkpoints")):
        raise CheckpointError(f"--out {out!r} already holds checkpoints; choose a new directory")
    cfg = workdir_lib.read_config(workdir)
    if "model" not in cfg:
        raise CheckpointError(f"{workdir!r} is not a kyx workdir (config.json has no model "
                              "section); import Hugging Face models with `kyx convert` first")
    dense = ModelConfig.from_config(cfg.model)
    moe = moe_config(dense, num_experts, top_k, every, first_dense, **moe_fields)
    dense_params = workdir_lib.load_params(workdir, Decoder(dense),
                                           sharding.single_device_mesh(),
                                           sharding.get_rules("dp"), step)
    if step < 0:
        step = workdir_lib.checkpoint_steps(workdir)[-1]
    params = upcycle_params(dense_params, dense, moe, jax.random.key(seed), noise, noise_type,
                            router_std)
    check_tree(params, abstract_params(Decoder(moe))[0])
    cfg.model = ml_collections.ConfigDict(dataclasses.asdict(moe))
    cfg.upcycle = ml_collections.ConfigDict({
        "source": os.path.abspath(workdir), "source_step": step, "noise": noise,
        "noise_type": noise_type, "router_std": -1.0 if router_std is None else router_std,
        "seed": seed})
    with WorkdirLock(out, "upcycle"):
        config_lib.dump(cfg, os.path.join(out, "config.json"))
        hf.copy_tokenizer_files(workdir, out)
        ckpt = Checkpointer(os.path.join(out, "checkpoints"), async_save=False)
        ckpt.save_params(0, params, config_lib.to_dict(cfg))
        ckpt.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kyx upcycle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="trained dense kyx workdir")
    parser.add_argument("--out", required=True, help="new MoE workdir")
    parser.add_argument("--num-experts", type=int, required=True)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="every N-th layer is MoE")
    parser.add_argument("--first-dense", type=int, default=0, help="first K layers stay dense")
    parser.add_argument("--noise", type=float, default=0.01,
                        help="relative scale S of the expert noise (0: exact copies)")
    parser.add_argument("--noise-type", choices=NOISE_TYPES, default="multiplicative")
    parser.add_argument("--router-std", type=float, default=None,
                        help="router init std (default: model.init_std; 0: zero router)")
    parser.add_argument("--dispatch", choices=("capacity", "dropless"), default="capacity")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=-1, help="source step (default: newest)")
    a = parser.parse_args(argv)
    out = upcycle_workdir(a.workdir, a.out, a.num_experts, a.top_k, a.every, a.first_dense,
                          a.noise, a.noise_type, a.router_std, a.seed, a.step,
                          moe_dispatch=a.dispatch, moe_capacity_factor=a.capacity_factor)
    print(f"wrote {out}: {a.num_experts} experts (top-{a.top_k}) upcycled from {a.workdir}; "
          f"optimizer state starts fresh: rewarm the learning rate", flush=True)
    return 0
