"""PPO on rewards from verifiers, reward models or an AI judge (kyx/train/ppo.py).

From an SFT policy (configs/sft.py:tiny), against the "parses as Python" verifier:

    kyx train --config configs/ppo.py:tiny --workdir runs/ppo --config.init_from=runs/sft

Rewards: --config.reward.terms='parses:1,no_repeats:0.5' (kyx/rewards); a reward model:
--config.reward.terms=rm --config.reward.model_workdir=runs/rm. Critic from the reward
model instead of the policy: --config.rl.value_init=reward. Baichuan 2's critic warm-up:
--config.rl.critic_warmup_steps=20. Adaptive KL: --config.rl.kl_target=6. GRPO is the
same trainer with --config.rl.algorithm=grpo (configs/grpo.py).
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import ppo

_MODEL = dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=4096,
              max_seq_len=128)
PRESETS = {
    "tiny": dict(model=_MODEL,
                 data=dict(seq_len=64, batch_size=16, eval_batches=4,
                           tokenizer=dict(vocab_size=4096),
                           records=dict(max_train=4000, max_eval=64)),
                 rl=dict(max_new_tokens=48, epochs=2, minibatches=2, kl_coef=0.05),
                 train=dict(steps=100, eval_every=25, log_every=5, eval_at_start=True),
                 optim=dict(lr=1e-4, warmup_steps=5, weight_decay=0.0),
                 value_optim=dict(lr=1e-4, warmup_steps=5, weight_decay=0.0),
                 checkpoint=dict(every=25)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(ppo.default_config(), PRESETS, arg)
