"""SFT on the embedded dataset (docstring -> function body, mined from the stdlib).

After the tiny pretraining (configs/pretrain.py:tiny):

    kyx train --config configs/pretrain.py:tiny --workdir runs/tiny
    kyx train --config configs/sft.py:tiny --workdir runs/sft --config.init_from=runs/tiny

Negative feedback (unlikelihood on the records' negative responses, ALGORITHMS §11b):
--config.loss.negative_feedback=true [--config.loss.neg_weight=1.0]. Your own data:
--config.data.records.source=jsonl --config.data.records.path=sft.jsonl
(fields prompt, response, optional system, negatives). Without init_from the model
starts from a fresh init.
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import sft

PRESETS = {
    "tiny": dict(model=dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                            vocab_size=4096, max_seq_len=128),
                 data=dict(seq_len=128, batch_size=16, eval_batches=8,
                           tokenizer=dict(vocab_size=4096),
                           records=dict(max_train=4000, max_eval=256)),
                 train=dict(steps=300, eval_every=100, log_every=20),
                 optim=dict(lr=1e-3, warmup_steps=20)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(sft.default_config(), PRESETS, arg)
