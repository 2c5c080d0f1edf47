"""Sampling responses from a policy on the mesh: one jitted KV-cache generation of a prompt
batch (kyx/data/prompts.py), then decoding this process's rows to text.

Used by RL rollouts and evaluation (kyx/train/rollout.py), rejection sampling and the
iterative alignment driver (kyx/alignment/). ``generate_fn`` is traceable, so a caller can
put generation inside a larger jit (the rollout's experience function does).
"""
from __future__ import annotations

import jax
import numpy as np

from kyx import sharding
from kyx.data.prompts import PROMPT_AXES
from kyx.model.decode import generate_padded


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global row order."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = sorted({s.index[0].start or 0: s for s in x.addressable_shards}.items())
    return np.concatenate([np.asarray(s.data) for _, s in shards])


class Sampler:
    """``sampler(params, prompts, rng) -> (texts, lengths)`` for this process's rows.

    ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p`` as in ``generate_padded``;
    sampling stops at ``stop_id`` (the chat template's end of turn)."""

    def __init__(self, module, params_sharding, mesh, rules, tokenizer, stop_id: int, *,
                 max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0):
        self.module, self.mesh, self.rules = module, mesh, rules
        self.tokenizer, self.stop_id = tokenizer, stop_id
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.top_k, self.top_p = int(top_k), float(top_p)
        self.prompt_shardings = {k: sharding.named_sharding(v, mesh, rules)
                                 for k, v in PROMPT_AXES.items()}
        self._generate = jax.jit(self.generate_fn, in_shardings=(
            params_sharding, self.prompt_shardings, None))

    def generate_fn(self, params, prompts: dict, rng) -> dict:
        """{tokens [B, N], lengths [B] (before the end of turn), logprobs [B, N]}."""
        return generate_padded(self.module, params, prompts["prompt_tokens"],
                               prompts["prompt_lengths"], rng,
                               max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                               top_k=self.top_k, top_p=self.top_p, eos_id=self.stop_id,
                               return_logprobs=True)

    def place(self, batch: dict) -> dict:
        """Process-local numpy prompt rows -> global arrays on the mesh."""
        return {k: jax.make_array_from_process_local_data(self.prompt_shardings[k],
                                                          np.asarray(v))
                for k, v in batch.items()}

    def texts(self, tokens_bn: np.ndarray, lengths_b: np.ndarray) -> list[str]:
        return [self.tokenizer.decode(tokens_bn[i, :lengths_b[i]].tolist())
                for i in range(len(lengths_b))]

    def generate(self, params, prompts: dict, rng) -> dict:
        """The jitted ``generate_fn`` on the mesh (device arrays)."""
        with sharding.use_mesh(self.mesh, self.rules):
            return self._generate(params, prompts, rng)

    def __call__(self, params, prompts: dict, rng) -> tuple[list[str], np.ndarray]:
        gen = self.generate(params, prompts, rng)
        lengths = local_rows(gen["lengths"])
        return self.texts(local_rows(gen["tokens"]), lengths), lengths
