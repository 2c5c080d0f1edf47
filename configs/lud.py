"""Lexical Unit Decoding training (KwaiYii; docs/generation.md): mine lexical units with
a fine-tuned model, reconfigure part of the SFT data with the placeholder, continue training.

After the tiny pretraining and SFT (configs/pretrain.py:tiny, configs/sft.py:tiny):

    kyx train --config configs/lud.py:tiny --workdir runs/lud --config.init_from=runs/sft
    kyx sample --workdir runs/lud --chat --lud --prompt "Return the sum of a list."

Options: --config.lud.k (positions per step, 1 + placeholders), --config.lud.alpha (mining
confidence), --config.lud.fraction (share of reconfigured records).
"""
import os

import ml_collections

from kyx import config as config_lib
from kyx.train import lud

HERE = os.path.dirname(os.path.abspath(__file__))
# the SFT preset of the same name (same model and data), continued at a lower learning rate
PRESETS = {"tiny": dict(optim=dict(lr=5e-4, warmup_steps=20),
                            lud=dict(k=4, alpha=0.9, fraction=0.5))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in PRESETS:  # no preset: the defaults; an unknown one: the usual error
        return config_lib.from_preset(lud.default_config(), PRESETS, arg)
    sft = config_lib.load(os.path.join(HERE, "sft.py") + f":{arg}")
    cfg = lud.default_config()
    for section in ("model", "data", "train", "optim"):
        cfg[section] = sft[section]
    return config_lib.from_preset(cfg, PRESETS, arg)
