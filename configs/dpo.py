"""Preference optimisation (DPO family) on the embedded preference pairs.

After SFT (configs/sft.py:tiny) or directly after the tiny pretraining:

    kyx train --config configs/dpo.py:tiny --workdir runs/dpo --config.init_from=runs/sft

Objectives: --config.loss.name=dpo|ipo|simpo|orpo|npo|kto (kto reads unpaired feedback
records). cDPO: --config.loss.label_smoothing=0.1. Llama 3 recipe: the `llama3` preset
(β 0.1, NLL on chosen with coefficient 0.2, formatting tokens masked). Reference:
--config.reference=frozen (a sharded copy in the train state) or precomputed (log-probs
computed once and cached next to the dataset).
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import dpo

_TINY = dict(model=dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        vocab_size=4096, max_seq_len=128),
             data=dict(seq_len=128, batch_size=16, eval_batches=16,
                       tokenizer=dict(vocab_size=4096),
                       records=dict(max_train=4000, max_eval=256)),
             train=dict(steps=200, eval_every=50, log_every=10),
             optim=dict(lr=1e-4, warmup_steps=10, weight_decay=0.0))
PRESETS = {
    "tiny": _TINY,
    "llama3": {**_TINY, "loss": dict(name="dpo", beta=0.1, nll_coef=0.2,
                                     mask_format_tokens=True)},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(dpo.default_config(), PRESETS, arg)
