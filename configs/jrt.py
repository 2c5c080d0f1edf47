"""JRT-RNN training (docs/jrt.md): the pretraining presets with next-token CE after a
per-document prefix of M tokens + 0.25 x masked-LM CE on 15% of the prefix tokens masked.

    kyx train --config configs/jrt.py:tiny --workdir runs/jrt

M is model.pla_prefix_len for prefix-linear-attention models, else loss.jrt_prefix_len
(tiny: 32 of 128 tokens, on the softmax decoder).
"""
import os

import ml_collections

from kyx import config as config_lib
from kyx.train import jrt

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = {"tiny": dict(loss=dict(jrt_prefix_len=32))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in PRESETS:  # no preset: the defaults; an unknown one: the usual error
        return config_lib.from_preset(jrt.default_config(), PRESETS, arg)
    base = config_lib.load(os.path.join(HERE, "pretrain.py") + f":{arg}")
    cfg = jrt.default_config()
    for section in ("model", "data", "train", "optim"):
        cfg[section] = base[section]
    return config_lib.from_preset(cfg, PRESETS, arg)
