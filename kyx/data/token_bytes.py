"""How many UTF-8 bytes of text each token id stands for: the denominator of bits per byte.

A loss in nats per token depends on how much text a token holds, so losses of models with
different tokenizers do not compare; bits per byte (CE summed over the targets / (ln 2 x
the UTF-8 bytes those targets decode to)) does. ``token_byte_lengths(tokenizer,
vocab_size)`` is the one place that knows, for every tokenizer kind kyx reads, how many
bytes an id decodes to; pretraining's eval sums it over the masked targets
(kyx/train/pretrain.py). Ids that decode to no text (pad, unk, BOS / EOS, chat control
pieces, the LUD placeholder, unused ids, and model ids past the tokenizer's vocabulary)
count 0 bytes; their CE still counts, as in every bits-per-byte figure.

* **kyx BPE** (``bpe`` / ``scaffold_bpe``, kyx/data/bpe.py): the bytes of each id. Exact:
  decoding is byte concatenation.
* **SentencePiece**: byte pieces ``<0xNN>`` 1, control / unknown / unused pieces 0, other
  pieces the UTF-8 length of their text with U+2581 (SentencePiece's space) read as a
  space. Exact for kyx-trained models (no dummy prefix, identity normalisation).
  Approximate for models with ``add_dummy_prefix`` (Llama 1/2): decoding drops the space
  of a text's first piece, which is counted here (1 byte per decoded text).
* **tokenizer.json** (the ``tokenizers`` library, kyx/data/hf_tokenizer.py): special added
  tokens 0, other added tokens their text. A ``ByteLevel`` decoder (GPT-2, Llama 3, Qwen2):
  each character of the token maps back to its byte (exact). Otherwise ``<0xNN>`` pieces of
  a ``byte_fallback`` BPE count 1, a ``Metaspace`` / ``▁`` -> space decoder counts the
  piece with U+2581 as a space (as SentencePiece, with the same first-space caveat), and
  anything else counts ``len(decode([id]).encode())`` (approximate where a decoder joins
  tokens, e.g. WordPiece's ``##``).
* Any other object with ``decode``: each id decoded alone (approximate as above).
"""
from __future__ import annotations

import json
import re

import numpy as np

from kyx.errors import ConfigError

SPACE_PIECE = "\u2581"   # SentencePiece's visible space
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _byte_chars() -> list[str]:
    """GPT-2's printable character of each byte (what ``ByteLevel`` maps bytes to)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
_CHAR_BYTE = {c: b for b, c in enumerate(BYTE_CHARS)}


def token_byte_lengths(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """np.int32 [vocab_size]: UTF-8 bytes of text each id decodes to (0 for ids that
    decode to no text), zero-padded from the tokenizer's vocabulary up to ``vocab_size``
    (the model's; default: the tokenizer's). See the module docstring for each kind."""
    if hasattr(tokenizer, "id_bytes"):
        lengths = [len(b) for b in tokenizer.id_bytes]
    elif getattr(tokenizer, "model_proto", None) is not None:
        lengths = _sentencepiece_lengths(tokenizer.model_proto)
    elif getattr(tokenizer, "backend", None) is not None:
        lengths = _tokenizers_lengths(tokenizer.backend)
    else:
        lengths = [len(tokenizer.decode([i]).encode("utf-8"))
                   for i in range(tokenizer.vocab_size)]
    n = len(lengths) if vocab_size is None else int(vocab_size)
    if n < len(lengths):
        raise ConfigError(f"model.vocab_size={n} is smaller than the tokenizer's "
                          f"{len(lengths)} ids; raise model.vocab_size")
    table = np.zeros(n, np.int32)
    table[:len(lengths)] = lengths
    return table


def _piece_bytes(piece: str) -> int:
    return len(piece.replace(SPACE_PIECE, " ").encode("utf-8", "surrogatepass"))


def _sentencepiece_lengths(proto: bytes) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    out = []
    for i in range(sp.get_piece_size()):
        if sp.is_byte(i):
            out.append(1)
        elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            out.append(0)
        else:
            out.append(_piece_bytes(sp.id_to_piece(i)))
    return out


def _component_types(spec) -> set[str]:
    """Types of a decoder spec and of the decoders of a ``Sequence``; ``Replace`` of
    U+2581 by a space counts as ``Metaspace``."""
    if not isinstance(spec, dict):
        return set()
    types = {spec.get("type")}
    if spec.get("type") == "Replace" and spec.get("content") == " " and \
            SPACE_PIECE in json.dumps(spec.get("pattern"), ensure_ascii=False):
        types.add("Metaspace")
    for sub in spec.get("decoders") or []:
        types |= _component_types(sub)
    return types


def _tokenizers_lengths(tok) -> list[int]:
    spec = json.loads(tok.to_str())
    decoders = _component_types(spec.get("decoder"))
    byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
    added = tok.get_added_tokens_decoder()
    out = []
    for i in range(tok.get_vocab_size(with_added_tokens=True)):
        if i in added:
            out.append(0 if added[i].special else len(added[i].content.encode("utf-8")))
            continue
        piece = tok.id_to_token(i)
        if piece is None:
            out.append(0)
        elif "ByteLevel" in decoders:
            out.append(sum(1 if c in _CHAR_BYTE else len(c.encode("utf-8")) for c in piece))
        elif byte_fallback and _BYTE_PIECE.fullmatch(piece):
            out.append(1)
        elif "Metaspace" in decoders:
            out.append(_piece_bytes(piece))
        else:
            out.append(len(tok.decode([i], skip_special_tokens=False).encode("utf-8")))
    return out
