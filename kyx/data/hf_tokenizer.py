"""Tokenizers of Hugging Face model directories behind kyx's Tokenizer protocol.

A SentencePiece `tokenizer.model` is used when present (Llama 1/2, Mistral, Baichuan 2);
otherwise `tokenizer.json` through the `tokenizers` package (Llama 3, Qwen2). Special-token
ids come from `tokenizer_config.json` / `config.json`; the chat template, when present, is
kept as text on `.chat_template`.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from kyx.data.tokenizer import SentencePieceTokenizer
from kyx.errors import ConfigError


class JsonTokenizer:
    """`tokenizers.Tokenizer` with explicit bos / eos / pad ids (no automatic specials)."""

    def __init__(self, path: str, bos_id: int | None, eos_id: int | None, pad_id: int | None):
        import tokenizers

        self.path = path
        self._tok = tokenizers.Tokenizer.from_file(path)
        self._bos, self._eos = bos_id, eos_id
        self._pad = pad_id if pad_id is not None else eos_id
        self.chat_template = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self):
        return self._bos

    @property
    def eos_id(self):
        return self._eos

    @property
    def pad_id(self):
        return self._pad

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _special_ids(model_dir: str) -> dict:
    ids = {}
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                value = cfg.get(key)
                if isinstance(value, list):
                    value = value[0] if value else None
                if value is not None:
                    ids.setdefault(key, int(value))
    return ids


def _chat_template(model_dir: str):
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get("chat_template")
    return None


def load_tokenizer(model_dir: str):
    """The tokenizer of an HF model directory or a kyx workdir."""
    sp_path = os.path.join(model_dir, "tokenizer.model")
    json_path = os.path.join(model_dir, "tokenizer.json")
    if os.path.exists(sp_path):
        tok = SentencePieceTokenizer.from_file(sp_path)
    elif os.path.exists(json_path):
        ids = _special_ids(model_dir)
        tok = JsonTokenizer(json_path, ids.get("bos_token_id"), ids.get("eos_token_id"),
                            ids.get("pad_token_id"))
    else:
        raise ConfigError(f"{model_dir!r} has neither tokenizer.model nor tokenizer.json")
    try:
        tok.chat_template = _chat_template(model_dir)
    except AttributeError:
        pass
    return tok
