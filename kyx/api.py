"""Notebook API: `kyx.load(workdir)` gives config, params, tokenizer, logits and generate."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding
from kyx.checkpoint import workdir as workdir_lib
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.interop import hf_dir
from kyx.model.config import ModelConfig
from kyx.model.decode import generate
from kyx.model.transformer import Decoder


@dataclasses.dataclass
class LoadedModel:
    config: Any
    params: Any
    tokenizer: Any
    model: Decoder
    step: int | None = None

    def logits(self, tokens) -> np.ndarray:
        """Logits [B, T, V] for token ids [T] or [B, T] (one document per row)."""
        arr = jnp.asarray(tokens, jnp.int32)
        if arr.ndim == 1:
            arr = arr[None]
        out, _ = jax.jit(self.model.apply)({"params": self.params}, arr)
        return np.asarray(out, np.float32)

    def generate(self, prompt: str | Sequence[str], max_tokens: int = 64,
                 temperature: float = 0.8, top_k: int = 0, top_p: float = 0.95,
                 seed: int = 0, chat: bool = False) -> str | list[str]:
        """Sample continuations of a prompt (or a list of prompts) as text. With ``chat``
        the prompt is a user turn of the chat template (kyx/data/chat.py) and sampling
        stops at the end-of-turn token (for SFT / DPO policies)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        eos = self.tokenizer.eos_id
        if chat:
            from kyx.data.chat import ChatTemplate
            template = ChatTemplate(self.tokenizer)
            ids, eos = [template.prompt_ids(p) for p in prompts], template.stop_id
        else:
            ids = [[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts]
        out = generate(self.model, self.params, ids, jax.random.key(seed),
                       max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, eos_id=eos)
        texts = [self.tokenizer.decode(o) for o in out]
        return texts[0] if isinstance(prompt, str) else texts


def load(workdir: str, step: int = -1) -> LoadedModel:
    """Load a trained workdir (config, tokenizer, newest or given params of its ``policy``
    model), or a Hugging Face model directory (config.json + safetensors) directly."""
    from kyx.train.pretrain import config_for_model

    mesh = sharding.single_device_mesh()
    if hf_dir.is_hf_dir(workdir):
        hf = hf_dir.load_hf_model(workdir, mesh)
        return LoadedModel(config_for_model(hf.config), hf.params, hf.tokenizer,
                           Decoder(hf.config))
    cfg = workdir_lib.read_config(workdir)
    model = Decoder(ModelConfig.from_config(cfg.model))
    params = workdir_lib.load_params(workdir, model, mesh, sharding.get_rules("dp"), step)
    return LoadedModel(cfg, params, load_tokenizer(workdir), model, step if step >= 0 else None)
