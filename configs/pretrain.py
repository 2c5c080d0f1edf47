"""Pretraining a decoder LM on the embedded corpus (the Python standard library's source).

Run the tiny preset (about two minutes on 2 CPU cores):

    kyx train --config configs/pretrain.py:tiny --workdir runs/tiny

Presets: tiny (CPU smoke run), small (the CPU benchmark size), 1b and 7b (TPU/GPU meshes,
e.g. --config.mesh.fsdp=-1 --config.mesh.data=1). Override any field with
--config.a.b=value, e.g. --config.loss.name=mile --config.loss.max_z_weight=2e-4.
"""
import ml_collections

from kyx import config as config_lib
from kyx.train import pretrain

PRESETS = {
    "tiny": dict(model=dict(d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                            vocab_size=4096, max_seq_len=128),
                 data=dict(seq_len=128, batch_size=16, eval_batches=8,
                           tokenizer=dict(vocab_size=4096)),
                 train=dict(steps=600, eval_every=50, log_every=20),
                 optim=dict(lr=3e-3, warmup_steps=50)),
    "small": dict(model=dict(d_model=512, num_layers=8, num_heads=8, num_kv_heads=4,
                             vocab_size=8192, max_seq_len=512, scan_unroll=8),
                  data=dict(seq_len=512, batch_size=8, eval_batches=8,
                            tokenizer=dict(vocab_size=8192)),
                  train=dict(steps=2000, eval_every=200, log_every=10),
                  optim=dict(lr=1e-3, warmup_steps=200)),
    "1b": dict(model=dict(d_model=2048, num_layers=18, num_heads=16, num_kv_heads=8,
                          vocab_size=32768, max_seq_len=2048, dtype="bfloat16", remat="dots"),
               data=dict(seq_len=2048, batch_size=256, eval_batches=16,
                         tokenizer=dict(vocab_size=32768)),
               train=dict(steps=100_000, eval_every=1000, log_every=50),
               optim=dict(lr=3e-4, warmup_steps=2000),
               mesh=dict(data=1, fsdp=-1)),
    "7b": dict(model=dict(d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                          vocab_size=65536, max_seq_len=4096, dtype="bfloat16", remat="full"),
               data=dict(seq_len=4096, batch_size=512, eval_batches=16,
                         tokenizer=dict(vocab_size=65536)),
               train=dict(steps=500_000, eval_every=2000, log_every=100),
               optim=dict(lr=2e-4, warmup_steps=2000, clip_norm=0.5),
               mesh=dict(data=1, fsdp=-1, tensor=1, rules="fsdp")),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.from_preset(pretrain.default_config(), PRESETS, arg)


def sampling() -> list[dict]:
    """Training rows as cache windows, i.i.d. or stratified by difficulty, vs document-order
    packing, the rest equal; run with ``experiments/sweep.py --sweep sampling --seeds 3
    --config.train.log_every=1`` and compare with ``experiments/data_sampling.py``."""
    return [{"name": "iid", "overrides": ["data.sampling=iid"]},
            {"name": "packed", "overrides": ["data.sampling=packed"]},
            {"name": "stratified", "overrides": ["data.sampling=stratified"]}]


def scaling() -> list[dict]:
    """Runs for the temporal scaling law study (docs/scaling.md): cosine decay to the end,
    a full validation pass every 10 steps, two learning rates; run with
    ``experiments/sweep.py --sweep scaling --seeds 3`` and fit with
    ``experiments/scaling_study.py``."""
    common = ["train.eval_every=10", "data.eval_batches=0", "optim.schedule=cosine"]
    return [{"name": "lr3e-3", "overrides": common + ["optim.lr=3e-3"]},
            {"name": "lr1e-3", "overrides": common + ["optim.lr=1e-3"]}]


# Studies of experiments/reproduce.py (docs/results.md): variants of the preset that differ
# in one technique; the runner adds train.seed = data.seed = 0..K-1.

def mile_study() -> list[dict]:
    """MiLe (KwaiYii) vs cross entropy, gamma in {0.5, 1, 2} (1 is the paper's default).

        python experiments/reproduce.py --study mile
    """
    return [{"name": "ce", "overrides": ["loss.name=ce"]}] + [
        {"name": f"mile_g{g}", "overrides": ["loss.name=mile", f"loss.mile_gamma={g}"]}
        for g in ("0.5", "1.0", "2.0")]


def logit_study() -> list[dict]:
    """Baichuan 2's max-z loss (2e-4) and PaLM's z-loss (1e-4) vs neither: at the preset's
    learning rate in float32, and in bfloat16 compute at 10x and 33x the learning rate,
    where a run that diverges shows up (non-finite steps are skipped, not fatal).

        python experiments/reproduce.py --study logits
    """
    terms = {"ce": [], "max_z": ["loss.max_z_weight=2e-4"], "z_loss": ["loss.z_loss_weight=1e-4"]}
    hot = {suffix: ["model.dtype=bfloat16", f"optim.lr={lr}", "train.nan_policy=skip"]
           for suffix, lr in (("_bf16_hot", "3e-2"), ("_bf16_lr0.1", "1e-1"))}
    return ([{"name": name, "overrides": o} for name, o in terms.items()]
            + [{"name": name + suffix, "overrides": o + h}
               for suffix, h in hot.items() for name, o in terms.items()])


def head_position_study() -> list[dict]:
    """Baichuan 2's NormHead vs a plain output head, and ALiBi vs RoPE positions (the
    runner also evaluates every run at twice the training length).

        python experiments/reproduce.py --study head_position
    """
    return [{"name": "rope", "overrides": []},
            {"name": "normhead", "overrides": ["model.norm_head=true"]},
            {"name": "alibi", "overrides": ["model.position=alibi"]}]


def excp_study() -> list[dict]:
    """ExCP's weight-pruning strength alpha (5e-5 is the paper's default), and pruning
    chosen per tensor to bound the weight error instead, on one run per seed:
    experiments/reproduce.py trains it once and recompresses its full checkpoints per
    variant (``prepare``; experiments/sweep.py refuses this sweep).

        python experiments/reproduce.py --study excp
    """
    return [{"name": f"a{a}", "overrides": [f"checkpoint.excp.alpha={a}"],
             "prepare": "excp_shared_run"} for a in ("5e-5", "5e-4", "2e-3")] + [
        {"name": "werr1e-2", "overrides": ["checkpoint.excp.max_werr=0.01"],
         "prepare": "excp_shared_run"}]   # error-bounded pruning: ||W - W_hat|| <= 1% ||W||
