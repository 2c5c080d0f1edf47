"""Notebook API: `kyx.load(workdir)` gives config, params, tokenizer, logits and generate.

A Hugging Face directory with only config.json and safetensors (no tokenizer files)
loads too: ``.logits()`` works on token ids, ``.generate()`` says which files to add.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding
from kyx.checkpoint import workdir as workdir_lib
from kyx.data import records
from kyx.data.hf_tokenizer import ADD_TOKENIZER, load_tokenizer
from kyx.data.templates import template_of
from kyx.errors import ConfigError
from kyx.interop import hf_dir
from kyx.model.config import ModelConfig
from kyx.model.decode import generate
from kyx.model.transformer import Decoder


@dataclasses.dataclass
class LoadedModel:
    config: Any
    params: Any
    tokenizer: Any          # None: a weights-only Hugging Face directory
    model: Decoder
    step: int | None = None
    source: str = ""        # the directory it was loaded from
    from_hf: bool = False   # a Hugging Face directory (its config is not a kyx run's)

    def logits(self, tokens) -> np.ndarray:
        """Logits [B, T, V] for token ids [T] or [B, T] (one document per row)."""
        arr = jnp.asarray(tokens, jnp.int32)
        if arr.ndim == 1:
            arr = arr[None]
        out, _ = jax.jit(self.model.apply)({"params": self.params}, arr)
        return np.asarray(out, np.float32)

    def generate(self, prompt: str | Sequence, max_tokens: int = 64,
                 temperature: float = 0.8, top_k: int = 0, top_p: float = 0.95,
                 seed: int = 0, chat: bool = False) -> str | list[str]:
        """Sample continuations of a prompt (or a list of prompts) as text. With ``chat``
        a prompt is a user turn, or a conversation (a list of ``{"role", "content"}``
        messages ending with a user turn), formatted with the chat template the model was
        trained with (kyx/data/templates.py), and sampling stops at its end-of-turn
        token (for SFT / DPO policies)."""
        if self.tokenizer is None:
            raise ConfigError(
                f"{self.source!r} has weights but no tokenizer, so kyx cannot turn text into "
                "token ids: .logits(token_ids) works; to generate text, "
                + ADD_TOKENIZER.format(dir=self.source) + ", then kyx.load it again")
        single = isinstance(prompt, str) or (chat and _is_conversation(prompt))
        prompts = [prompt] if single else list(prompt)
        eos = self.tokenizer.eos_id
        if chat:
            template = template_of(self.tokenizer, None if self.from_hf else self.config)
            ids = [template.prompt_ids(**_chat_prompt(p)) for p in prompts]
            eos = template.stop_id
        else:
            ids = [[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts]
        out = generate(self.model, self.params, ids, jax.random.key(seed),
                       max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, eos_id=eos)
        texts = [self.tokenizer.decode(o) for o in out]
        return texts[0] if single else texts


def _is_conversation(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict)


def _chat_prompt(prompt) -> dict:
    """prompt_ids arguments of a user turn (text) or a conversation ending with one."""
    if isinstance(prompt, str):
        return {"prompt": prompt}
    rec, reason = records.parse_prompt(list(prompt))
    if reason:
        raise ConfigError(f"a chat prompt must be a text or messages ending with a user turn "
                          f"(roles system, user, assistant alternating); got {reason}")
    return rec


def load(workdir: str, step: int = -1) -> LoadedModel:
    """Load a trained workdir (config, tokenizer, newest or given params of its ``policy``
    model), or a Hugging Face model directory (config.json + safetensors) directly."""
    from kyx.train.pretrain import config_for_model

    mesh = sharding.single_device_mesh()
    if hf_dir.is_hf_dir(workdir):
        hf = hf_dir.load_hf_model(workdir, mesh)
        return LoadedModel(config_for_model(hf.config), hf.params, hf.tokenizer,
                           Decoder(hf.config), source=workdir, from_hf=True)
    cfg = workdir_lib.read_config(workdir)
    model = Decoder(ModelConfig.from_config(cfg.model))
    params = workdir_lib.load_params(workdir, model, mesh, sharding.get_rules("dp"), step)
    return LoadedModel(cfg, params, load_tokenizer(workdir), model,
                       step if step >= 0 else None, source=workdir)
