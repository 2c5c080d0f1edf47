"""Where a PPO / GRPO step spends its time: rollout (generation + the policy, reference and
critic forwards, one jit), reward scoring on the host, and the update (epochs x
minibatches, one jit).

Builds the RL trainer of configs/{ppo,grpo}.py with a fresh policy of the given size (no
init_from: timing does not depend on the weights; generation runs to max_new_tokens when no
end of turn is sampled) and prints one JSON line per size: generated tokens/s inside the
rollout jit, seconds per phase (median over the timed steps, compilation excluded) and the
rollout's share of the step.

    python benchmarks/rollout.py [--sizes tiny,small] [--algorithm ppo] [--steps 4]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kyx import config as config_lib  # noqa: E402
from kyx import sharding  # noqa: E402
from kyx.train import registry  # noqa: E402
from kyx.train import state as state_lib  # noqa: E402
from kyx.train.sampling import local_rows  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {  # model dims of configs/pretrain.py's presets; batch 8 prompts
    "tiny": ["model.d_model=128", "model.num_layers=2", "model.num_heads=4",
             "model.num_kv_heads=2", "model.vocab_size=4096", "data.tokenizer.vocab_size=4096"],
    "small": ["model.d_model=512", "model.num_layers=8", "model.num_heads=8",
              "model.num_kv_heads=4", "model.vocab_size=8192", "data.tokenizer.vocab_size=8192"],
}


def bench(size: str, algorithm: str, steps: int, new_tokens: int) -> dict:
    overrides = SIZES[size] + ["data.batch_size=8", f"rl.max_new_tokens={new_tokens}",
                               "model.max_seq_len=128", "train.measure_mfu=false"]
    cfg = config_lib.load(os.path.join(ROOT, "configs", f"{algorithm}.py:tiny"), overrides)
    trainer = registry.build(cfg)
    rollout = trainer.rollout
    mesh, rules = sharding.mesh_from_config(cfg.mesh)
    state = state_lib.create(trainer.models, mesh, rules, 0, trainer.stats)
    p_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.rollout_axes.items()}
    b_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.batch_axes.items()}
    step = jax.jit(trainer.step_fn, in_shardings=(None, b_sh, None), donate_argnums=(0,))
    times = {"generate_s": [], "score_s": [], "update_s": []}
    generated = []
    with sharding.use_mesh(mesh, rules):
        for i in range(steps + 1):
            prompts = {k: jax.device_put(v, p_sh[k]) for k, v in next(trainer.train_iter).items()}
            params = {n: m.params for n, m in state.models.items()}
            t0 = time.perf_counter()
            exp = jax.block_until_ready(rollout._experience(params, prompts, jax.random.key(i)))
            t1 = time.perf_counter()
            texts = rollout.sampler.texts(local_rows(exp.pop("_response")), local_rows(exp.pop("_lengths")))
            total, parts = rollout.score(local_rows(exp["index"]), texts, "train")
            exp["score"] = jax.device_put(total, b_sh["score"])
            for name, v in parts.items():
                exp[f"score/{name}"] = jax.device_put(v, b_sh["score"])
            t2 = time.perf_counter()
            state, m = step(state, exp, jax.random.key(100 + i))
            jax.block_until_ready(m)
            t3 = time.perf_counter()
            if i:  # the first step compiles
                times["generate_s"].append(t1 - t0)
                times["score_s"].append(t2 - t1)
                times["update_s"].append(t3 - t2)
                generated.append(float(np.sum(local_rows(exp["response_len"]))))
    med = {k: float(np.median(v)) for k, v in times.items()}
    total_s = sum(med.values())
    rows = cfg.data.batch_size * cfg.rl.group_size
    return {"bench": "rollout", "size": size, "algorithm": algorithm, "rows": rows,
            "max_new_tokens": new_tokens, "epochs": cfg.rl.epochs,
            "minibatches": cfg.rl.minibatches, **med,
            "generated_tokens_per_s": float(np.median(generated)) / med["generate_s"],
            "decode_slots_per_s": rows * new_tokens / med["generate_s"],
            "rollout_share": (med["generate_s"] + med["score_s"]) / total_s,
            "backend": jax.default_backend(), "devices": jax.device_count()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--algorithm", default="ppo", choices=["ppo", "grpo"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        print(json.dumps(bench(size, args.algorithm, args.steps, args.max_new_tokens)),
              flush=True)


if __name__ == "__main__":
    main()
