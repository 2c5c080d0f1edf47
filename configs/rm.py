"""Reward model (Bradley-Terry) on the embedded preference pairs.

Pairs mined from the stdlib: chosen = the true function body, rejected = a corrupted one
(a repetition loop, or lines from another function). After the tiny pretraining:

    kyx train --config configs/rm.py:tiny --workdir runs/rm --config.init_from=runs/tiny

Llama 2 margins by preference strength: --config.loss.margin=small|large. MoE backbone
(the KwaiYii-style MoE reward model): the `tiny_moe` preset, from scratch or from an MoE
run, e.g. the tiny pretraining upcycled to 4 experts (init_from adopts its architecture):

    kyx upcycle --workdir runs/tiny --out runs/tiny_moe --num-experts 4 --top-k 2
    kyx train --config configs/rm.py:tiny_moe --workdir runs/rm_moe --config.init_from=runs/tiny_moe
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import rm

_TINY = dict(model=dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        vocab_size=4096, max_seq_len=128),
             data=dict(seq_len=128, batch_size=16, eval_batches=16,
                       tokenizer=dict(vocab_size=4096),
                       records=dict(max_train=4000, max_eval=256)),
             train=dict(steps=300, eval_every=100, log_every=20),
             optim=dict(lr=5e-4, warmup_steps=20))
PRESETS = {
    "tiny": _TINY,
    "tiny_moe": {**_TINY, "model": {**_TINY["model"], "moe_num_experts": 4, "moe_top_k": 2}},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(rm.default_config(), PRESETS, arg)
