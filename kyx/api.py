"""Notebook API: `kyx.load(workdir)` gives config, params, tokenizer, logits and generate.

A Hugging Face directory with only config.json and safetensors (no tokenizer files)
loads too: ``.logits()`` works on token ids, ``.generate()`` says which files to add.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Sequence

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
from kyx.data.tokenizer import placeholder_id
from kyx.model.decode import generate, generate_batches
from kyx.model.lud import DEFAULTS as lud_defaults
from kyx.model.quant import quantize_params
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
    quantized: str | None = None  # "int8": matmul weights row-wise int8 (kyx/model/quant.py)

    def logits(self, tokens) -> np.ndarray:
        """Logits [B, T, V] for token ids [T] or [B, T] (one document per row)."""
        arr = jnp.asarray(tokens, jnp.int32)
        if arr.ndim == 1:
            arr = arr[None]
        return np.asarray(_logits(self.model, self.params, arr), np.float32)

    def generate(self, prompt: str | Sequence, max_tokens: int = 64,
                 temperature: float = 0.8, top_k: int = 0, top_p: float = 0.95,
                 seed: int = 0, chat: bool = False, batch_size: int | None = None,
                 **decode_options) -> str | list[str]:
        """Sample continuations of a prompt (or a list of prompts) as text. With ``chat``
        a prompt is a user turn, or a conversation (a list of ``{"role", "content"}``
        messages ending with a user turn), formatted with the chat template the model was
        trained with (kyx/data/templates.py), and sampling stops at its end-of-turn
        token (for SFT / DPO policies). ``batch_size``: prompts go in batches of exactly
        that many rows (see ``kyx.model.decode.generate``); ``decode_options`` are passed
        on to it."""
        single = isinstance(prompt, str) or (chat and _is_conversation(prompt))
        prompts = [prompt] if single else list(prompt)
        ids, eos = self.prompt_ids(prompts, chat)
        out = self.generate_ids(ids, eos, max_tokens=max_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size,
                                **decode_options)
        texts = [self.tokenizer.decode(o) for o in out]
        return texts[0] if single else texts

    def prompt_ids(self, prompts: Sequence, chat: bool = False) -> tuple[list[list[int]], int]:
        """(token ids of each prompt, the id that ends a completion): BOS + the text, or
        with ``chat`` the chat template's generation prompt and its end-of-turn id."""
        if self.tokenizer is None:
            raise ConfigError(
                f"{self.source!r} has weights but no tokenizer, so kyx cannot turn text into "
                "token ids: .logits(token_ids) works; to generate text, "
                + ADD_TOKENIZER.format(dir=self.source) + ", then kyx.load it again")
        if chat:
            template = template_of(self.tokenizer, None if self.from_hf else self.config)
            return [template.prompt_ids(**_chat_prompt(p)) for p in prompts], template.stop_id
        return ([[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts],
                self.tokenizer.eos_id)

    def generate_ids(self, ids: Sequence[Sequence[int]], eos_id: int | None, *,
                     max_tokens: int = 64, temperature: float = 0.8, top_k: int = 0,
                     top_p: float = 0.95, seed: int = 0, batch_size: int | None = None,
                     **decode_options) -> list[list[int]]:
        """New token ids per prompt (EOS excluded) from ``kyx.model.decode.generate``."""
        return generate(self.model, self.params, ids, jax.random.key(seed),
                        **_options(max_tokens, temperature, top_k, top_p, eos_id),
                        batch_size=batch_size, **self._decoding(decode_options))

    def generate_batches(self, ids: Sequence[Sequence[int]], eos_id: int | None, *,
                         batch_size: int, start_batch: int = 0, max_tokens: int = 64,
                         temperature: float = 0.8, top_k: int = 0, top_p: float = 0.95,
                         seed: int = 0, **decode_options) -> Iterator[list[list[int]]]:
        """``generate_ids`` batch by batch from batch ``start_batch`` on (resumable runs;
        ``kyx.model.decode.generate_batches``): the same ids as ``generate_ids`` with
        that ``batch_size``."""
        return generate_batches(self.model, self.params, ids, jax.random.key(seed),
                                batch_size=batch_size, start_batch=start_batch,
                                **_options(max_tokens, temperature, top_k, top_p, eos_id),
                                **self._decoding(decode_options))

    def _decoding(self, options: dict) -> dict:
        """``lud=True`` or ``lud={"k": .., "alpha": ..}`` -> LUD's options with the
        tokenizer's placeholder id (kyx/model/lud.py; docs/generation.md)."""
        lud = options.get("lud")
        if not lud:
            return {k: v for k, v in options.items() if k != "lud"}
        if self.tokenizer is None:
            raise ConfigError("Lexical Unit Decoding needs the model's tokenizer (for its "
                              "placeholder id)")
        chosen = {**lud_defaults, **(lud if isinstance(lud, dict) else {})}
        unknown = set(chosen) - {"k", "alpha", "repetition_control"}
        if unknown:
            raise ConfigError(f"unknown LUD options {sorted(unknown)}; use k, alpha, "
                              "repetition_control")
        if int(chosen["k"]) < 2 or not 0.0 <= float(chosen["alpha"]) <= 1.0:
            raise ConfigError(f"LUD needs k >= 2 and 0 <= alpha <= 1, got {chosen}")
        return {**options, "lud": {**chosen, "k": int(chosen["k"]),
                                   "alpha": float(chosen["alpha"]),
                                   "ph_id": placeholder_id(self.tokenizer)}}


def _options(max_tokens, temperature, top_k, top_p, eos_id) -> dict:
    return dict(max_new_tokens=int(max_tokens), temperature=float(temperature),
                top_k=int(top_k), top_p=float(top_p), eos_id=eos_id)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: Decoder, params, tokens_bt: jax.Array) -> jax.Array:
    return model.apply({"params": params}, tokens_bt)[0]


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


def load(workdir: str, step: int = -1, quantize: str | None = None) -> LoadedModel:
    """Load a trained workdir (config, tokenizer, newest or given params of its ``policy``
    model), or a Hugging Face model directory (config.json + safetensors) directly.
    ``quantize="int8"`` stores the matmul weights as row-wise int8 + float32 scales
    (kyx/model/quant.py), which the model dequantises where it uses them."""
    from kyx.train.pretrain import config_for_model

    mesh = sharding.single_device_mesh()
    if hf_dir.is_hf_dir(workdir):
        hf = hf_dir.load_hf_model(workdir, mesh)
        loaded = LoadedModel(config_for_model(hf.config), hf.params, hf.tokenizer,
                             Decoder(hf.config), source=workdir, from_hf=True)
    else:
        cfg = workdir_lib.read_config(workdir)
        model = Decoder(ModelConfig.from_config(cfg.model))
        params = workdir_lib.load_params(workdir, model, mesh, sharding.get_rules("dp"), step)
        loaded = LoadedModel(cfg, params, load_tokenizer(workdir), model,
                             step if step >= 0 else None, source=workdir)
    if quantize is None:
        return loaded
    params = quantize_params(loaded.params, loaded.model.cfg.tie_embeddings, quantize)
    return dataclasses.replace(loaded, params=params, quantized=quantize)
