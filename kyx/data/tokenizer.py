"""Tokenizers: a small ``Tokenizer`` protocol and a SentencePiece BPE implementation.

``train_sentencepiece`` follows Baichuan 2's choices: BPE, no normalisation
(identity rule, no dummy prefix, whitespace kept), digits split one per token,
byte fallback (no text is ever unknown), whitespace-only pieces allowed (code
indentation), pieces of at most 32 characters, character coverage 0.9999.
Training input is cut into line-aligned chunks, so newlines take part in merges
and ``decode(encode(s)) == s`` holds for any string, tabs and newlines included.

Ids of models trained here: pad=0, unk=1, bos=2, eos=3, the four chat control
pieces ``CHAT_TOKENS`` (ids 4..7: system, user, assistant, end of turn), the LUD
placeholder ``PLACEHOLDER`` (id 8), then the 256 byte pieces ``<0x00>``..``<0xFF>``
(ids 9..264), then learned pieces. Control
pieces are never produced by ``encode`` (text such as "<|user|>" stays text); the
chat template (kyx/data/chat.py) inserts their ids, and falls back to encoding the
marker text when a tokenizer lacks them (older or converted tokenizers). A trained
model is cached under ``cache_dir`` by a fingerprint of the training text and
options, so a second call with the same inputs loads it instead of retraining.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import sentencepiece as spm

from kyx.errors import ConfigError, DataError, IntegrityError
from kyx.logs import get_logger
from kyx.fileio import atomic_write, read_checked

log = get_logger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Reserved for chat formatting (post-training); ids 4..7 in tokenizers trained here.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|eot|>")
# Lexical Unit Decoding's placeholder (kyx/model/lud.py): an input-only id, never a target;
# id 8 in tokenizers trained here.
PLACEHOLDER = "<|ph|>"
SENTENCE_BYTES = 4096  # longest training chunk; sentencepiece drops longer ones

TRAINER_OPTIONS = dict(
    model_type="bpe",
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    split_digits=True,
    byte_fallback=True,
    allow_whitespace_only_pieces=True,
    max_sentencepiece_length=32,
    character_coverage=0.9999,
    max_sentence_length=SENTENCE_BYTES,
    pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
    control_symbols=[*CHAT_TOKENS, PLACEHOLDER],
)


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and samplers need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece model; picklable (it travels as its serialized proto)."""

    def __init__(self, model_proto: bytes, path: str = "", num_threads: int = 1):
        self._proto, self.path, self.num_threads = bytes(model_proto), path, num_threads
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        if self._sp.eos_id() < 0:
            raise ConfigError(f"SentencePiece model {path or '<proto>'} has no EOS piece; "
                              f"documents need one. Retrain it with eos_id set.")

    @classmethod
    def from_file(cls, path: str, num_threads: int = 1) -> SentencePieceTokenizer:
        try:
            return cls(read_checked(path), path=path, num_threads=num_threads)
        except IntegrityError:
            raise
        except (OSError, RuntimeError) as e:
            raise ConfigError(f"Cannot load SentencePiece model {path!r}: {e}") from e

    def __getstate__(self):
        return {"proto": self._proto, "path": self.path, "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.__init__(state["proto"], state["path"], state["num_threads"])

    @property
    def model_proto(self) -> bytes:
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    @property
    def pad_id(self) -> int:
        """The model's pad id, or eos for models without a pad piece."""
        return self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=self.num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def special_id(self, piece: str) -> int | None:
        """Id of a single piece such as "<|user|>" (control or user-defined), else None."""
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() or self._sp.id_to_piece(i) != piece else i


def placeholder_id(tokenizer) -> int:
    """The tokenizer's LUD placeholder id (``PLACEHOLDER``), or a ConfigError saying why
    there is none."""
    special = getattr(tokenizer, "special_id", lambda piece: None)
    ph = special(PLACEHOLDER)
    if ph is None:
        raise ConfigError(
            f"Lexical Unit Decoding needs the input-only placeholder piece {PLACEHOLDER!r}, "
            "which this tokenizer lacks (tokenizers trained by kyx reserve it as id 8 since "
            "LUD was added); train the model with a current kyx tokenizer, then LUD-train it "
            "(configs/lud.py)")
    return ph


def to_sentences(texts: Iterable[str], max_bytes: int,
                 sentence_bytes: int = SENTENCE_BYTES) -> list[str]:
    """Cuts texts into line-aligned chunks of at most ``sentence_bytes`` UTF-8 bytes.

    Stops after the text that brings the total past ``max_bytes``. Lines longer
    than a chunk are cut every ``sentence_bytes // 4`` characters.
    """
    out, total = [], 0

    def flush(buf):
        if buf:
            out.append("".join(buf))
        return [], 0

    for text in texts:
        buf, size = [], 0
        for line in text.splitlines(keepends=True):
            n = len(line.encode("utf-8", "surrogatepass"))
            if n > sentence_bytes:
                buf, size = flush(buf)
                step = sentence_bytes // 4
                out.extend(line[i:i + step] for i in range(0, len(line), step))
                continue
            if size + n > sentence_bytes:
                buf, size = flush(buf)
            buf.append(line)
            size += n
        flush(buf)
        total += len(text.encode("utf-8", "surrogatepass"))
        if total >= max_bytes:
            break
    return out


def fingerprint(sentences: Sequence[str], vocab_size: int, corpus_id: str = "") -> str:
    """Hash of training text, options, vocab size and sentencepiece version."""
    h = hashlib.sha256()
    meta = {"v": 1, "spm": spm.__version__, "vocab": vocab_size, "opts": TRAINER_OPTIONS,
            "corpus": corpus_id}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for s in sentences:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, cache_dir: str | None = None,
                        corpus_id: str = "", max_bytes: int = 8 << 20,
                        num_threads: int | None = None) -> SentencePieceTokenizer:
    """Trains (or loads from ``cache_dir``) a BPE model on up to ``max_bytes`` of ``texts``."""
    if vocab_size <= 264:
        raise ConfigError(f"tokenizer.vocab_size={vocab_size} is too small: 8 special and 256 "
                          f"byte pieces come first, then the corpus's characters (e.g. use 4096).")
    sentences = to_sentences(texts, max_bytes)
    if not sentences:
        raise DataError("No text to train the tokenizer on: the training split is empty.")
    key = fingerprint(sentences, vocab_size, corpus_id)
    path = os.path.join(cache_dir, f"spm_bpe{vocab_size}_{key}.model") if cache_dir else ""
    if path and os.path.exists(path):
        log.info("Loading cached tokenizer %s", path)
        try:
            return SentencePieceTokenizer.from_file(path)
        except IntegrityError as e:  # a cache: rebuild it rather than stop
            log.warning("%s; training the tokenizer again", e)
    threads = num_threads or min(os.cpu_count() or 1, 8)
    log.info("Training BPE tokenizer: vocab %d, %d chunks, %d threads", vocab_size,
             len(sentences), threads)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            num_threads=threads, minloglevel=2,
            **TRAINER_OPTIONS)
    except RuntimeError as e:
        raise ConfigError(f"SentencePiece training failed (tokenizer.vocab_size={vocab_size}, "
                          f"{sum(map(len, sentences))} characters of text): {e}") from e
    if path:
        # concurrent trainers never see a partial file; readers verify the digest
        atomic_write(path, model.getvalue(), checksum=True)
    return SentencePieceTokenizer(model.getvalue(), path=path)
