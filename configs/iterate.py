"""Iterative alignment in rounds (KwaiYii's RLHF + RLAIF; Llama's rejection sampling).

From an SFT policy (configs/sft.py:tiny), DPO rounds on pairs scored by the "parses"
verifier, evaluated against round 0:

    kyx iterate --config configs/iterate.py:tiny --workdir runs/iterate --config.policy=runs/sft

With a reward model (configs/rm.py) and an AI judge (RLAIF, the policy itself):
--config.reward.terms='rm:1,parses:1' --config.reward.model_workdir=runs/rm
--config.pairs.source=judge --config.judge.source=policy. PPO rounds:
--config.algorithm=ppo. Rejection-sampled SFT before each round: --config.sft_data=true.
The trainer sections (dpo, ppo, sft, rm) are those of their config files' tiny presets;
override them as usual, e.g. --config.dpo.train.steps=100. Kill and rerun the same
command to resume.
"""
import os

import ml_collections

from kyx import config as config_lib
from kyx.alignment import iterate

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = {
    "tiny": dict(rounds=3, samples=dict(prompts=128, n=4, batch_prompts=16,
                                        max_new_tokens=48, prompt_len=64),
                 eval=dict(prompts=128, win_by="parses")),
}
STAGES = {"dpo": dict(train=dict(steps=100, eval_every=50), optim=dict(lr=5e-5)),
          "ppo": dict(train=dict(steps=50, eval_every=50)),
          "sft": dict(train=dict(steps=100, eval_every=100)),
          "rm": dict(train=dict(steps=100, eval_every=100))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    cfg = iterate.default_config()
    for name, preset in STAGES.items():
        stage = config_lib.load(os.path.join(HERE, f"{name}.py") + ":tiny")
        cfg[name] = config_lib.from_preset(stage, {"round": preset}, "round")
    return config_lib.from_preset(cfg, PRESETS, arg)
