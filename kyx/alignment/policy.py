"""A policy (kyx workdir or Hugging Face directory) on the mesh, for sampling outside
training: N responses per prompt, and the KL of its samples to another policy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.data.prompts import PromptBatch, prompt_row
from kyx.data.templates import template_of
from kyx.errors import ConfigError
from kyx.interop import sources
from kyx.model.params import param_shardings
from kyx.model.transformer import Decoder
from kyx.train.rollout import assemble, policy_logps
from kyx.train.sampling import Sampler, local_rows


class Policy:
    """``source``'s policy (a value-head policy's backbone) placed on ``mesh``."""

    def __init__(self, source: str, mesh, rules, *, max_new_tokens: int = 48,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 prompt_len: int = 64):
        if jax.process_count() > 1:
            raise ConfigError("sampling outside training runs on one host (its devices may "
                              "form any mesh); launch it as a single process")
        self.source, self.mesh, self.rules = source, mesh, rules
        self.module = Decoder(sources.model_config(source))
        self.params = sources.load_params(source, self.module, mesh, rules)
        self.tokenizer = load_tokenizer(source)
        self.template = template_of(self.tokenizer, sources.run_config(source))
        self.prompt_len = prompt_len
        p_sh, _ = param_shardings(self.module, mesh, rules)
        self.sampler = Sampler(self.module, p_sh, mesh, rules, self.tokenizer,
                               self.template.stop_id, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p)
        self.divisor = sharding.batch_divisor(mesh, rules)

    def batches(self, prompts: list[dict], n: int, batch_prompts: int):
        """(first prompt index, padded prompt batch of batch_prompts x n rows) chunks."""
        rows = batch_prompts * n
        if rows % self.divisor:
            raise ConfigError(f"{batch_prompts} prompts x {n} samples = {rows} rows do not "
                              f"split over the mesh's {self.divisor} batch shards")
        for start in range(0, len(prompts), batch_prompts):
            chunk = [prompt_row(self.template, p["prompt"], p.get("system", ""),
                                self.prompt_len, start + i, p.get("history", ()))[0]
                     for i, p in enumerate(prompts[start:start + batch_prompts])]
            yield start, PromptBatch(batch_prompts, n, 0, 1)(chunk)

    def sample(self, prompts: list[dict], n: int, seed: int, batch_prompts: int = 16,
               with_tokens: bool = False):
        """``n`` responses (text) per prompt, [len(prompts)][n], sampled with the key
        ``fold_in(key(seed), chunk)``; ``with_tokens`` also returns the device batches
        (prompts, generation) for ``kl_to``."""
        out, raw = [], []
        for chunk, (start, batch) in enumerate(self.batches(prompts, n, batch_prompts)):
            dev = self.sampler.place(batch)
            gen = self.sampler.generate(self.params, dev,
                                        jax.random.fold_in(jax.random.key(seed), chunk))
            texts = self.sampler.texts(local_rows(gen["tokens"]), local_rows(gen["lengths"]))
            real = int(batch["weight"].sum()) // n
            out += [texts[i * n:(i + 1) * n] for i in range(real)]
            raw.append((dev, gen, real * n))
        return (out, raw) if with_tokens else out

    def kl_to(self, other: "Policy", raw) -> np.ndarray:
        """Per-response Σ_t [log pi_self(y_t) − log pi_other(y_t)] over ``raw`` samples of
        this policy (from ``sample(..., with_tokens=True)``): a Monte-Carlo KL(self ‖ other)."""
        if other.module.cfg.vocab_size != self.module.cfg.vocab_size:
            raise ConfigError("KL between policies with different vocabularies")
        n_new, t = self.sampler.max_new_tokens, float(self.sampler.temperature)
        pad = self.tokenizer.pad_id

        def kl(p_self, p_other, prompts, gen):
            stopped = gen["lengths"] < n_new
            seq = assemble(prompts["prompt_tokens"], prompts["prompt_lengths"], gen["tokens"],
                           gen["lengths"] + stopped.astype(jnp.int32), pad)
            a, _ = policy_logps(self.module, p_self, seq, t)
            b, _ = policy_logps(other.module, p_other, seq, t)
            return jnp.sum(a - b, axis=1)
        fn = jax.jit(kl)
        out = []
        with sharding.use_mesh(self.mesh, self.rules):
            for dev, gen, real in raw:
                out.append(local_rows(fn(self.params, other.params, dev, gen))[:real])
        return np.concatenate(out) if out else np.zeros(0)
