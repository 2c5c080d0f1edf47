"""ColBERT late-interaction retrieval (docstring -> code) on the embedded pairs.

Pairs mined from the stdlib (kyx/data/retrieval.py): query = a function's docstring
summary, document = its code. After the tiny pretraining:

    kyx train --config configs/colbert.py:tiny --workdir runs/colbert --config.init_from=runs/tiny

The single-vector baseline of the same backbone and training: --config.colbert.scoring=mean_pool.
Results: docs/retrieval.md.
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import colbert

_TINY = dict(model=dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        vocab_size=4096, max_seq_len=128),
             data=dict(seq_len=96, batch_size=32,
                       tokenizer=dict(vocab_size=4096),
                       records=dict(max_train=4000, max_eval=256, max_response_lines=8,
                                    max_response_chars=400)),
             colbert=dict(dim=128, query_len=32),
             train=dict(steps=300, eval_every=100, log_every=20),
             optim=dict(lr=5e-4, warmup_steps=20))
PRESETS = {"tiny": _TINY}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(colbert.default_config(), PRESETS, arg)


def sweep():
    """ColBERT's MaxSim vs the mean-pooled single vector, same backbone and training
    (docs/retrieval.md): experiments/sweep.py --config configs/colbert.py:tiny
    --sweep sweep --seeds 3 --config.init_from=<a tiny pretraining workdir>."""
    return [{"name": name, "overrides": [f"colbert.scoring={name}"]}
            for name in ("maxsim", "mean_pool")]
