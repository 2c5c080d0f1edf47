"""Notebook API: `kyx.load(workdir)` gives config, params, tokenizer, logits and generate."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx import config as config_lib
from kyx import sharding
from kyx.interop.hf_tokenizer import load_tokenizer
from kyx.errors import CheckpointError
from kyx.model.config import ModelConfig
from kyx.model.decode import generate
from kyx.model.transformer import Decoder
from kyx.train.init_from import load_params


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
    """Load a trained workdir (config, tokenizer, newest or given params), or a Hugging
    Face model directory (config.json + safetensors) directly."""
    from kyx.interop import convert, hf, hf_layouts

    if convert.is_hf_dir(workdir):
        model_cfg, layout = hf_layouts.model_config_from_hf(hf.read_hf_config(workdir))
        params = hf.load_params(workdir, model_cfg, layout)
        from kyx.train.pretrain import default_config
        cfg = default_config()
        for key, value in vars(model_cfg).items():
            cfg.model[key] = value
        return LoadedModel(cfg, params, load_tokenizer(workdir), Decoder(model_cfg))
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{workdir!r} is not a kyx workdir (no config.json)")
    cfg = config_lib.load_json(cfg_path)
    model = Decoder(ModelConfig.from_config(cfg.model))
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    params = load_params(workdir, model, mesh, sharding.get_rules("dp"), step)
    tokenizer = load_tokenizer(workdir)
    return LoadedModel(cfg, params, tokenizer, model, step if step >= 0 else None)
