"""GRPO: group-relative advantages over G samples per prompt, no critic, k3 KL in the loss.

    kyx train --config configs/grpo.py:tiny --workdir runs/grpo --config.init_from=runs/sft

The same trainer as PPO (kyx/train/ppo.py) with rl.algorithm=grpo; see configs/ppo.py for
rewards. Group size: --config.rl.group_size=8.
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import ppo

_MODEL = dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=4096,
              max_seq_len=128)
PRESETS = {
    "tiny": dict(model=_MODEL,
                 data=dict(seq_len=64, batch_size=4, eval_batches=4,
                           tokenizer=dict(vocab_size=4096),
                           records=dict(max_train=4000, max_eval=64)),
                 rl=dict(algorithm="grpo", group_size=4, max_new_tokens=48, epochs=1,
                         minibatches=2, kl_coef=0.04, kl_estimator="k3", reward_norm=False,
                         reward_clip=0.0),
                 train=dict(steps=100, eval_every=25, log_every=5, eval_at_start=True),
                 optim=dict(lr=1e-4, warmup_steps=5, weight_decay=0.0),
                 checkpoint=dict(every=25)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(ppo.default_config(), PRESETS, arg)
