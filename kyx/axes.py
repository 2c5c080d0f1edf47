"""Logical axis names: the vocabulary shared by parameters, activations and rule presets.

Parameters and activations are annotated with these names; a rule preset in
kyx/sharding.py maps each to mesh axes. Parameter names and activation names are kept
apart so that under FSDP a weight can be split over ``fsdp`` along ``embed`` while
activations are split over ``fsdp`` along the batch.
"""
from __future__ import annotations

# ----------------------------------------------------------------------------- parameters
LAYERS = "layers"        # the stacked (scanned) layer axis
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
EXP = "exp"              # MoE experts
LATENTS = "latents"      # sparse-autoencoder latents (kyx/analysis/sae.py)

PARAM_AXES = (LAYERS, VOCAB, EMBED, MLP, HEADS, KV_HEADS, HEAD_DIM, EXP, LATENTS)

# ----------------------------------------------------------------------------- activations
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"
ACT_EXP = "act_exp"              # experts of dispatched tokens
ACT_EXP_BATCH = "act_exp_batch"  # batch of dispatched tokens
ACT_LATENTS = "act_latents"      # sparse-autoencoder latents of a batch of activations

# common activation layouts
B = (ACT_BATCH,)
BT = (ACT_BATCH, ACT_LENGTH)
BTD = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)
