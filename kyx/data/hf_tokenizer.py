"""Tokenizers of Hugging Face model directories behind kyx's Tokenizer protocol.

A SentencePiece `tokenizer.model` is used when present (Llama 1/2, Mistral, Baichuan 2),
else kyx's byte-level BPE file `tokenizer.bpe.json` (``data.tokenizer.kind = "bpe" |
"scaffold_bpe"``, kyx/data/bpe.py); otherwise `tokenizer.json` through the `tokenizers`
package (Llama 3, Qwen2). Special-token
ids come from `config.json` / `generation_config.json`. The tokenizer metadata a chat
template needs is kept on the tokenizer object:

* ``.chat_template``: the model's Jinja chat template: `chat_template.jinja` (what
  transformers 5 saves) or the `chat_template` of `tokenizer_config.json` (a text, or a
  list of named templates of which kyx takes ``default``); None without one;
* ``.special_tokens``: `bos_token`, `eos_token`, `unk_token`, `pad_token` as text, from
  `tokenizer_config.json` (falling back to `special_tokens_map.json`), the variables a
  chat template renders.

A directory with weights but no tokenizer file (``has_tokenizer`` False) loads without a
tokenizer (kyx.load: logits work, generating text says what to add).
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

from kyx.data.bpe import BpeTokenizer
from kyx.data.tokenizer import SentencePieceTokenizer
from kyx.errors import ConfigError
from kyx.fileio import atomic_write, read_checked

SP_FILE, JSON_FILE, CONFIG_FILE = "tokenizer.model", "tokenizer.json", "tokenizer_config.json"
BPE_FILE = "tokenizer.bpe.json"   # kyx's byte-level (Scaffold-)BPE model
JINJA_FILE, MAP_FILE = "chat_template.jinja", "special_tokens_map.json"
GENERATION_FILE = "generation_config.json"
# Every tokenizer file of a Hugging Face directory (copied between workdirs and HF dirs).
TOKENIZER_FILES = (SP_FILE, BPE_FILE, JSON_FILE, CONFIG_FILE, MAP_FILE, GENERATION_FILE, JINJA_FILE)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
ADD_TOKENIZER = ("copy the model's tokenizer files (tokenizer.json or tokenizer.model, and "
                 "tokenizer_config.json) into {dir}, e.g. `huggingface-cli download REPO "
                 "tokenizer.json tokenizer_config.json --local-dir {dir}`")


class JsonTokenizer:
    """`tokenizers.Tokenizer` with explicit bos / eos / pad ids (no automatic specials).

    ``encode`` matches the tokenizer's added tokens (e.g. ``<|eot_id|>``) in the text, as
    transformers does, so a rendered chat template encodes to its special ids."""

    def __init__(self, path: str, bos_id: int | None, eos_id: int | None, pad_id: int | None):
        import tokenizers

        self.path = path
        self._tok = tokenizers.Tokenizer.from_file(path)
        self._bos, self._eos = bos_id, eos_id
        self._pad = pad_id if pad_id is not None else eos_id
        self.chat_template = None
        self.special_tokens: dict[str, str] = {}

    @property
    def backend(self):
        """The ``tokenizers.Tokenizer`` (its model, decoder and added tokens)."""
        return self._tok

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

    def id_to_piece(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def special_ids(self) -> dict[str, int]:
        """Text -> id of the tokenizer's special added tokens."""
        return {t.content: int(i) for i, t in self._tok.get_added_tokens_decoder().items()
                if t.special}


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}


def _special_ids(model_dir: str) -> dict:
    ids = {}
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            cfg = _read_json(path)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                value = cfg.get(key)
                if isinstance(value, list):
                    value = value[0] if value else None
                if value is not None:
                    ids.setdefault(key, int(value))
    return ids


def read_chat_template(model_dir: str) -> str | None:
    """The directory's chat template: chat_template.jinja, else tokenizer_config.json's
    ``chat_template`` (a text, or a list of {name, template} whose ``default`` is used)."""
    jinja = os.path.join(model_dir, JINJA_FILE)
    if os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    path = os.path.join(model_dir, CONFIG_FILE)
    template = _read_json(path).get("chat_template") if os.path.exists(path) else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # AddedToken as saved by transformers
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_special_tokens(model_dir: str) -> dict[str, str]:
    """bos / eos / unk / pad token texts of tokenizer_config.json (else
    special_tokens_map.json); absent or null ones are left out."""
    out: dict[str, str] = {}
    for name in (CONFIG_FILE, MAP_FILE):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            data = _read_json(path)
            for key in SPECIAL_TOKENS:
                text = _token_text(data.get(key))
                if text is not None:
                    out.setdefault(key, text)
    return out


def has_tokenizer(model_dir: str) -> bool:
    return any(os.path.exists(os.path.join(model_dir, n))
               for n in (SP_FILE, BPE_FILE, JSON_FILE))


def load_tokenizer(model_dir: str):
    """The tokenizer of an HF model directory or a kyx workdir."""
    sp_path = os.path.join(model_dir, SP_FILE)
    json_path = os.path.join(model_dir, JSON_FILE)
    bpe_path = os.path.join(model_dir, BPE_FILE)
    if os.path.exists(sp_path):
        tok = SentencePieceTokenizer.from_file(sp_path)
    elif os.path.exists(bpe_path):
        tok = BpeTokenizer.from_file(bpe_path)
    elif os.path.exists(json_path):
        ids = _special_ids(model_dir)
        tok = JsonTokenizer(json_path, ids.get("bos_token_id"), ids.get("eos_token_id"),
                            ids.get("pad_token_id"))
    else:
        raise ConfigError(f"{model_dir!r} has none of {SP_FILE}, {BPE_FILE}, {JSON_FILE}; "
                          + ADD_TOKENIZER.format(dir=model_dir))
    tok.chat_template = read_chat_template(model_dir)
    tok.special_tokens = read_special_tokens(model_dir)
    tok.source_dir = model_dir
    return tok


def special_ids(tokenizer) -> dict[str, int]:
    """Text -> id of the tokenizer's special tokens, as Hugging Face tokenizers match them
    in text: added special tokens (tokenizer.json), or a SentencePiece model's control
    and unknown pieces (``<s>``, ``</s>``, kyx's chat markers ...)."""
    if hasattr(tokenizer, "special_ids"):
        return tokenizer.special_ids()
    proto = getattr(tokenizer, "model_proto", None)
    if proto is None:
        return {}
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    return {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
            if sp.is_control(i) or sp.is_unknown(i)}


def encode_with_special_tokens(tokenizer, text: str, specials: dict[str, int] | None = None
                               ) -> list[int]:
    """Ids of text in which special tokens are written out (a rendered chat template):
    each special token's text becomes its id and the text between is encoded as usual.
    ``tokenizers`` does this itself; for SentencePiece the text is split here."""
    if isinstance(tokenizer, JsonTokenizer):
        return tokenizer.encode(text)
    specials = special_ids(tokenizer) if specials is None else specials
    if not specials:
        return list(tokenizer.encode(text))
    pattern = "(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")"
    out: list[int] = []
    for i, part in enumerate(re.split(pattern, text)):
        if i % 2:
            out.append(specials[part])
        elif part:
            out += tokenizer.encode(part)
    return out


def save_tokenizer(tokenizer, workdir: str) -> list[str]:
    """Write a run's tokenizer into its workdir: ``tokenizer.model`` (checksummed) for
    SentencePiece, ``tokenizer.bpe.json`` (checksummed) for kyx's byte-level BPE, and the Hugging Face tokenizer files of the directory it was loaded
    from (tokenizer.json, tokenizer_config.json with its chat template, ...; not its
    generation_config.json, which an export derives from the run), so the workdir alone
    gives the same tokens and chat template (kyx.load, sampling, init_from)."""
    written = []
    proto = getattr(tokenizer, "model_proto", None)
    if proto is not None:
        atomic_write(os.path.join(workdir, SP_FILE), proto, checksum=True)
        written.append(SP_FILE)
    bpe_json = getattr(tokenizer, "model_json", None)
    if bpe_json is not None:
        atomic_write(os.path.join(workdir, BPE_FILE), bpe_json, checksum=True)
        written.append(BPE_FILE)
    source = getattr(tokenizer, "source_dir", None)
    if source and os.path.abspath(source) != os.path.abspath(workdir):
        for name in TOKENIZER_FILES:
            if name == GENERATION_FILE:   # the run's own: its export derives it
                continue
            if name not in written and os.path.exists(os.path.join(source, name)):
                atomic_write(os.path.join(workdir, name),
                             read_checked(os.path.join(source, name)), checksum=True)
                written.append(name)
    return written
