"""Retrieval pairs (docstring -> code) and ColBERT batches.

**Pairs** (``mine_pairs``): documented functions of the corpus (kyx/data/mining.py, the
standard library by default), query = the docstring's first line, document = the
function's code without its docstring. Train pairs come from the corpus's train files,
held-out pairs from its validation files (split by a hash of the file path,
kyx/data/corpus.py), so a held-out function was never a training pair nor seen in
pretraining. Within a split a pair whose query or document text was already taken is
dropped (the stdlib repeats short functions), and held-out pairs whose query or document
occurs among the train pairs are dropped. Capped by ``data.records.max_train`` /
``max_eval``; the ``max_prompt_chars`` / ``max_response_*`` caps bound the signature and
body as for SFT.

**Tokens** (ColBERT's input format on a decoder):

* query: ``BOS [Q] query`` truncated to N_q = ``colbert.query_len`` tokens, then padded to
  N_q with the mask token (query augmentation: these are real inputs, attended and
  scored);
* document: ``BOS [D] code`` truncated to ``data.seq_len``, right-padded; ``d_mask`` is 1
  on its tokens except padding and punctuation (``punctuation_table``).

[Q], [D] and the mask token are single special pieces of the tokenizer (by default the
``<|user|>`` / ``<|assistant|>`` chat markers and the LUD placeholder ``<|ph|>``, which
kyx tokenizers reserve and ``encode`` never produces).

**Batches**: ``q_tokens`` [B, N_q], ``d_tokens`` / ``d_segment_ids`` / ``d_mask`` [B, T],
``weight`` [B] (1 real, 0 padding). Training draws B pairs per step from a seeded
permutation (a new one each epoch; checkpointable state); evaluation is one batch holding
every held-out pair, padded to a multiple of ``data.batch_size``, so each query is ranked
against all held-out documents.
"""
from __future__ import annotations

import dataclasses
import string
import types

import numpy as np

from kyx import axes as ax
from kyx.data import mining, preference_corpus
from kyx.errors import ConfigError, DataError

BATCH_AXES = {"q_tokens": ax.BT, "d_tokens": ax.BT, "d_segment_ids": ax.BT, "d_mask": ax.BT,
              "weight": ax.B}
PUNCTUATION = frozenset(string.punctuation)


@dataclasses.dataclass(frozen=True)
class Pairs:
    queries: list[str]
    documents: list[str]


def mine_pairs(corpus, records_cfg) -> dict[str, Pairs]:
    """{"train", "validation"}: (query, document) pairs mined from ``corpus``."""
    caps = types.SimpleNamespace(
        max_prompt_chars=records_cfg.max_prompt_chars,
        max_response_lines=records_cfg.max_response_lines,
        max_response_chars=records_cfg.max_response_chars)
    out, seen_q, seen_d = {}, set(), set()
    for split, cap in (("train", records_cfg.max_train), ("validation", records_cfg.max_eval)):
        # mine past the cap: duplicates are dropped afterwards
        fns = preference_corpus.mine_split(corpus, split, 2 * cap if cap else 0, caps)
        qs, ds = [], []
        for fn in fns:
            q, d = mining.retrieval_pair(fn)
            if q in seen_q or d in seen_d:
                continue
            seen_q.add(q)
            seen_d.add(d)
            qs.append(q)
            ds.append(d)
            if cap and len(qs) >= cap:
                break
        if len(qs) < 2:
            raise DataError(f"mined only {len(qs)} distinct docstring -> code pairs from the "
                            f"{split} split of corpus {corpus.name!r}; use a larger corpus "
                            f"of Python files")
        out[split] = Pairs(qs, ds)
    return out


def punctuation_table(tokenizer, vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: ids whose text alone is punctuation (ignoring whitespace), e.g.
    ``(``, ``):``, ``,``; ColBERT masks these out of documents. Ids that decode to no
    text (special pieces) or past the tokenizer's vocabulary are False."""
    table = np.zeros(vocab_size, bool)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        text = "".join(tokenizer.decode([i]).split())
        table[i] = bool(text) and all(c in PUNCTUATION for c in text)
    return table


def special_ids(tokenizer, colbert_cfg) -> dict[str, int]:
    """Ids of the [Q] / [D] markers and the query mask token, or a ConfigError."""
    special = getattr(tokenizer, "special_id", lambda piece: None)
    out = {}
    for key in ("query_marker", "doc_marker", "mask_token"):
        piece = colbert_cfg[key]
        out[key] = special(piece)
        if out[key] is None:
            raise ConfigError(f"colbert.{key} = {piece!r} is not a single special piece of "
                              f"this tokenizer; name one it has (kyx tokenizers reserve "
                              f"'<|user|>', '<|assistant|>', '<|ph|>')")
    return out


@dataclasses.dataclass(frozen=True)
class Encoder:
    """Text -> ColBERT query / document token rows."""
    tokenizer: object
    query_len: int
    doc_len: int
    ids: dict
    punct: np.ndarray

    def queries(self, texts) -> np.ndarray:
        """int32 [N, N_q]: BOS [Q] query, padded with the mask token."""
        out = np.full((len(texts), self.query_len), self.ids["mask_token"], np.int32)
        for r, ids in enumerate(self.tokenizer.encode_batch(list(texts))):
            row = [self.tokenizer.bos_id, self.ids["query_marker"], *ids][:self.query_len]
            out[r, :len(row)] = row
        return out

    def documents(self, texts) -> dict[str, np.ndarray]:
        """d_tokens, d_segment_ids (1 real, 0 pad) int32 and d_mask float32 [N, T]."""
        tokens = np.full((len(texts), self.doc_len), self.tokenizer.pad_id, np.int32)
        seg = np.zeros((len(texts), self.doc_len), np.int32)
        for r, ids in enumerate(self.tokenizer.encode_batch(list(texts))):
            row = [self.tokenizer.bos_id, self.ids["doc_marker"], *ids][:self.doc_len]
            tokens[r, :len(row)] = row
            seg[r, :len(row)] = 1
        mask = (seg > 0) & ~self.punct[tokens]
        return {"d_tokens": tokens, "d_segment_ids": seg, "d_mask": mask.astype(np.float32)}

    def batch(self, pairs: Pairs, rows: np.ndarray, pad_to: int = 0) -> dict[str, np.ndarray]:
        """The batch of pairs ``rows``, padded with weight-0 empty rows to ``pad_to``."""
        q = self.queries([pairs.queries[i] for i in rows])
        d = self.documents([pairs.documents[i] for i in rows])
        b = {"q_tokens": q, **d, "weight": np.ones(len(rows), np.float32)}
        extra = max(pad_to - len(rows), 0)
        if extra:
            fill = {"q_tokens": self.ids["mask_token"], "d_tokens": self.tokenizer.pad_id}
            b = {k: np.concatenate([v, np.full((extra, *v.shape[1:]), fill.get(k, 0), v.dtype)])
                 for k, v in b.items()}
        return b


def make_encoder(tokenizer, data_cfg, colbert_cfg, vocab_size: int) -> Encoder:
    return Encoder(tokenizer, colbert_cfg.query_len, data_cfg.seq_len,
                   special_ids(tokenizer, colbert_cfg),
                   punctuation_table(tokenizer, vocab_size) if colbert_cfg.mask_punctuation
                   else np.zeros(vocab_size, bool))


class PairIterator:
    """Training batches of ``batch_size`` pairs (this process's rows of each global
    batch): a seeded permutation per epoch, partial last batches dropped."""

    def __init__(self, encoder: Encoder, pairs: Pairs, batch_size: int, seed: int, *,
                 process_index: int = 0, process_count: int = 1):
        n = len(pairs.queries)
        if n < batch_size:
            raise DataError(f"{n} training pairs are fewer than data.batch_size={batch_size}")
        self.encoder, self.pairs, self.batch_size, self.seed = encoder, pairs, batch_size, seed
        self.per_epoch = n // batch_size
        rows = batch_size // process_count
        self.local = slice(process_index * rows, (process_index + 1) * rows)
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, k = divmod(self.index, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs.queries))
        rows = order[k * self.batch_size:(k + 1) * self.batch_size][self.local]
        self.index += 1
        return self.encoder.batch(self.pairs, rows)

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def eval_batch(encoder: Encoder, pairs: Pairs, multiple: int, *, process_index: int = 0,
               process_count: int = 1) -> dict[str, np.ndarray]:
    """Every held-out pair in one batch (padded to a multiple of ``multiple``), this
    process's rows of it."""
    n = len(pairs.queries)
    total = -(-n // multiple) * multiple
    b = encoder.batch(pairs, np.arange(n), pad_to=total)
    rows = total // process_count
    return {k: v[process_index * rows:(process_index + 1) * rows] for k, v in b.items()}
