"""Rollouts for RL: sample responses with the KV-cache decoder inside one jit, score them.

``Rollout(...)(state, prompts, rng)`` turns a device batch of prompts
(kyx/data/prompts.py) into the experience batch a PPO / GRPO step consumes:

1. one jitted call: ``generate_padded`` (temperature / top-k / top-p, stops at the chat
   template's end of turn), then full forward passes over prompt + response of the
   policy (``old_logp``, at the sampling temperature), the frozen ``ref`` (``ref_logp``)
   and the critic or the policy's value head, if any (``values``);
2. on the host, per process and only for its own rows: responses decoded to text and
   scored by the reward (kyx/rewards), which may run its own models on the mesh.

Sequences are ``[B, P + N]`` (P = prompt width, N = ``rl.max_new_tokens``): the prompt,
then the response (end of turn included when sampled), then padding. Action positions
(``mask``) are those whose logit predicts a response token.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx import axes as ax
from kyx import sharding
from kyx.data.prompts import PROMPT_AXES
from kyx.objectives.sft import token_logps
from kyx.train.forward import forward_with_aux
from kyx.train.sampling import Sampler, local_rows

SEQUENCE_KEYS = ("tokens", "targets", "segment_ids", "positions", "mask")
EXPERIENCE_AXES = {**{k: ax.BT for k in SEQUENCE_KEYS + (
    "old_logp", "ref_logp", "values", "sample_logp")},
    **{k: ax.B for k in ("score", "weight", "response_len", "stopped", "index")}}


def assemble(prompt_bp, prompt_len_b, response_bn, response_len_b, pad_id: int) -> dict:
    """Prompt + response rows: tokens, next-token targets, segment ids, positions and the
    action mask (positions whose logit predicts a response token)."""
    b, p = prompt_bp.shape
    n = response_bn.shape[1]
    t_t = jnp.arange(p + n)
    end_b = prompt_len_b + response_len_b
    from_prompt = jnp.take_along_axis(prompt_bp, jnp.minimum(t_t, p - 1)[None].repeat(b, 0),
                                      axis=1)
    r_idx = jnp.clip(t_t[None] - prompt_len_b[:, None], 0, n - 1)
    from_response = jnp.take_along_axis(response_bn, r_idx, axis=1)
    tokens = jnp.where(t_t[None] < prompt_len_b[:, None], from_prompt,
                       jnp.where(t_t[None] < end_b[:, None], from_response, pad_id))
    real = t_t[None] < end_b[:, None]
    targets = jnp.concatenate([tokens[:, 1:], jnp.full((b, 1), pad_id, tokens.dtype)], axis=1)
    mask = ((t_t[None] >= prompt_len_b[:, None] - 1) & (t_t[None] < end_b[:, None] - 1))
    return {"tokens": tokens.astype(jnp.int32), "targets": targets.astype(jnp.int32),
            "segment_ids": real.astype(jnp.int32),
            "positions": jnp.broadcast_to(t_t, (b, p + n)).astype(jnp.int32),
            "mask": mask.astype(jnp.float32)}


def policy_logps(model, params, seq: dict, temperature: float, rng=None, probes=None):
    """(log pi(a_t) at the sampling temperature [B, T], Forward) over a sequence batch."""
    fwd = forward_with_aux(model, params, seq, rng, probes)
    logits = fwd.out.astype(jnp.float32) / (temperature or 1.0)
    return token_logps(logits, seq["targets"]) * seq["mask"], fwd


class Rollout:
    """Experience from prompts; see the module docstring. ``models``: the trainer's model
    specs (``policy``, ``ref``, optional ``value``); ``prompt_text(split, index)`` gives a
    record's prompt for the reward."""

    def __init__(self, rl_cfg, models: dict, shardings, mesh, rules, tokenizer, stop_id: int,
                 reward, prompt_text, split: str = "train"):
        self.cfg, self.mesh, self.rules = rl_cfg, mesh, rules
        self.pad_id = tokenizer.pad_id
        self.reward, self.prompt_text, self.split = reward, prompt_text, split
        self.policy, self.ref = models["policy"].module, models["ref"].module
        self.value = models["value"].module if "value" in models else None
        p_sh = {n: m.params for n, m in shardings.models.items()}
        prompt_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in PROMPT_AXES.items()}
        self.exp_sh = {k: sharding.named_sharding(v, mesh, rules)
                       for k, v in EXPERIENCE_AXES.items()}
        out_sh = {k: v for k, v in self.exp_sh.items() if k != "score"}
        out_sh.update(_response=self.exp_sh["tokens"], _lengths=self.exp_sh["weight"])
        self.sampler = Sampler(self.policy, p_sh["policy"], mesh, rules, tokenizer, stop_id,
                               max_new_tokens=rl_cfg.max_new_tokens,
                               temperature=rl_cfg.temperature, top_k=rl_cfg.top_k,
                               top_p=rl_cfg.top_p)
        self._experience = jax.jit(self._experience_fn, in_shardings=(p_sh, prompt_sh, None),
                                   out_shardings=out_sh)

    # ------------------------------------------------------------------ device
    def _experience_fn(self, params, prompts, rng):
        gen = self.sampler.generate_fn(params["policy"], prompts, rng)
        n = self.cfg.max_new_tokens
        stopped = gen["lengths"] < n                 # the end of turn was sampled
        response_len = gen["lengths"] + stopped.astype(jnp.int32)
        seq = assemble(prompts["prompt_tokens"], prompts["prompt_lengths"], gen["tokens"],
                       response_len, self.pad_id)
        t = float(self.cfg.temperature)
        old_logp, fwd = policy_logps(self.policy, params["policy"], seq, t)
        ref_logp, _ = policy_logps(self.ref, params["ref"], seq, t)
        values = fwd.aux.get("values_bt", jnp.zeros_like(old_logp)) * seq["mask"]  # a head
        if self.value is not None:
            values = forward_with_aux(self.value, params["value"], seq).out * seq["mask"]
        i_bt = jnp.clip(seq["positions"] - prompts["prompt_lengths"][:, None] + 1, 0, n - 1)
        sample_logp = jnp.take_along_axis(gen["logprobs"], i_bt, axis=1) * seq["mask"]
        return {**seq, "old_logp": old_logp, "ref_logp": ref_logp, "values": values,
                "sample_logp": sample_logp, "weight": prompts["weight"],
                "response_len": response_len, "stopped": stopped.astype(jnp.float32),
                "index": prompts["index"],
                "_response": gen["tokens"], "_lengths": gen["lengths"]}

    # ------------------------------------------------------------------ host
    def score(self, index_b: Sequence[int], responses: Sequence[str], split: str):
        prompts = [self.prompt_text(split, int(i)) for i in index_b]
        return self.reward(prompts, responses)

    def __call__(self, state, prompts: dict, rng) -> dict:
        params = {n: m.params for n, m in state.models.items()}
        with sharding.use_mesh(self.mesh, self.rules):
            exp = self._experience(params, prompts, rng)
        responses = self.sampler.texts(local_rows(exp.pop("_response")),
                                       local_rows(exp.pop("_lengths")))
        total, parts = self.score(local_rows(exp["index"]), responses, self.split)
        put = lambda v: jax.make_array_from_process_local_data(  # noqa: E731
            self.exp_sh["score"], np.asarray(v, np.float32))
        exp["score"] = put(total)
        for name, values in parts.items():
            exp[f"score/{name}"] = put(values)
        return exp

    def sample(self, params, prompts: dict, rng, split: str):
        """(responses as text, total scores, {term: scores}, response lengths) for this
        process's rows: evaluation."""
        responses, lengths = self.sampler(params, prompts, rng)
        total, parts = self.score(local_rows(prompts["index"]), responses, split)
        return responses, total, parts, lengths
