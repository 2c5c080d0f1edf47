"""Sparse autoencoder on a trained model's activations (docs/analysis.md).

After the tiny pretraining (configs/pretrain.py:tiny in runs/tiny):

    kyx train --config configs/sae.py:tiny --workdir runs/sae \\
        --config.sae.model_workdir=runs/tiny --config.sae.site=blocks.1.resid

The first run harvests the site's activations over the model's own corpus into the data
cache (reused by every later run on the same model, step, site and harvest settings);
``--config.sae.buffer=DIR`` reads an existing buffer instead. ``--config.sae.kind=relu``
trains Anthropic's ReLU + L1 SAE (λ = ``sae.l1``) instead of TopK. Sweeps: ``k`` (TopK)
and ``l1`` (ReLU), e.g. ``python experiments/sweep.py --config configs/sae.py:tiny
--sweep sweep --root runs/sae_sweep --config.sae.model_workdir=runs/tiny``, then
``python experiments/sae_frontier.py --root runs/sae_sweep`` for the L0 vs loss-recovered
frontier.
"""
import ml_collections

from kyx import config as config_lib
from kyx.analysis import sae_trainer

PRESETS = {
    # d_model 128 -> 1024 latents; 200k harvested tokens; ~1M training tokens
    "tiny": dict(sae=dict(site="blocks.1.resid", n_latents=1024, k=16, k_aux=128,
                          dead_tokens=100_000, init_sample=8192, l1=1.0,
                          harvest=dict(tokens=200_000, batch_size=16, seq_len=128),
                          lm_eval=dict(batches=8)),
                 data=dict(batch_size=1024, eval_batches=8),
                 train=dict(steps=1000, eval_every=250, log_every=50),
                 optim=dict(lr=1e-3),
                 checkpoint=dict(every=500)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(sae_trainer.default_config(), PRESETS, arg)


def sweep() -> list[dict]:
    """The sparsity frontier: TopK over k, ReLU + L1 over λ (each its own run)."""
    topk = [{"name": f"topk_k{k}", "overrides": ["sae.kind=topk", f"sae.k={k}"]}
            for k in (4, 8, 16, 32, 64)]
    relu = [{"name": f"relu_l{lam:g}", "overrides": ["sae.kind=relu", f"sae.l1={lam}"]}
            for lam in (0.3, 1.0, 3.0, 10.0)]
    return topk + relu
