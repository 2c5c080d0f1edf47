"""A ColBERT workdir as a retriever: document token vectors in a ColBERTv2-compressed index,
top-k MaxSim search, and the ranking metrics of the held-out pairs through the index.

* ``Retriever.load(workdir)``: the trained encoder (``encoder`` params of a
  kyx/train/colbert.py run, newest checkpoint, one device), its tokenizer and the input
  format of its config (kyx/data/retrieval.py).
* ``build_index``: the documents' unmasked token vectors (padding and punctuation are not
  stored), compressed by kyx/model/residual_codec.py (centroids fitted on those vectors;
  default 2 bits per dimension, about sqrt(#vectors) x 4 centroids).
* ``Index.search``: each document's MaxSim with the query, computed over the decompressed
  vectors (exhaustive: no candidate generation, fine for thousands of documents);
  ``nbits=0`` keeps the float32 vectors (the uncompressed reference).
* ``save_index`` / ``load_index``: one checksummed ``.npz`` (``<workdir>/colbert_index/``
  for ``kyx retrieve``: built once per (step, nbits), then reused).
* ``held_out_metrics``: MRR@10 / recall@k of the run's held-out queries against all
  held-out documents, through an index (the eval of kyx/train/colbert.py, same pairs).
"""
from __future__ import annotations

import dataclasses
import io
import json

import jax
import numpy as np

from kyx import sharding
from kyx.checkpoint import workdir as workdir_lib
from kyx.data import retrieval
from kyx.data.corpus import load_corpus
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.errors import ConfigError
from kyx.fileio import atomic_write, read_checked
from kyx.model import residual_codec
from kyx.model.colbert import ColbertEncoder
from kyx.model.config import ModelConfig
from kyx.objectives import late_interaction as li
from kyx.train.colbert import NAME

ENCODE_BATCH = 32


@dataclasses.dataclass
class Retriever:
    cfg: object
    module: ColbertEncoder
    params: object
    encoder: retrieval.Encoder

    @classmethod
    def load(cls, workdir: str, step: int = -1) -> "Retriever":
        cfg = workdir_lib.read_config(workdir)
        if cfg.get("trainer") != "colbert":
            raise ConfigError(f"{workdir!r} is a {cfg.get('trainer')!r} run, not a colbert one "
                              "(configs/colbert.py)")
        module = ColbertEncoder(ModelConfig.from_config(cfg.model), cfg.colbert.dim)
        params = workdir_lib.load_params(workdir, module, sharding.single_device_mesh(),
                                         sharding.get_rules("dp"), step, name=NAME)
        encoder = retrieval.make_encoder(load_tokenizer(workdir), cfg.data, cfg.colbert,
                                         cfg.model.vocab_size)
        return cls(cfg, module, params, encoder)

    def _embed(self, tokens, segment_ids, mask):
        fn = getattr(self, "_jitted", None)
        if fn is None:
            def fn(params, tokens, segment_ids, mask):
                proj, _ = self.module.apply({"params": params}, tokens, segment_ids)
                return li.token_embeddings(proj, mask)
            fn = self._jitted = jax.jit(fn)
        return np.asarray(fn(self.params, tokens, segment_ids, mask))

    def queries(self, texts) -> list[np.ndarray]:
        """Per query: its N_q token vectors [N_q, k] (mask tokens included)."""
        out = []
        for i in range(0, len(texts), ENCODE_BATCH):
            tok = self.encoder.queries(texts[i:i + ENCODE_BATCH])
            ones = np.ones_like(tok)
            out += list(self._embed(tok, ones, ones.astype(np.float32)))
        return out

    def documents(self, texts) -> list[np.ndarray]:
        """Per document: its unmasked token vectors [n_d, k]."""
        out = []
        for i in range(0, len(texts), ENCODE_BATCH):
            d = self.encoder.documents(texts[i:i + ENCODE_BATCH])
            emb = self._embed(d["d_tokens"], d["d_segment_ids"], d["d_mask"])
            out += [e[m > 0] for e, m in zip(emb, d["d_mask"])]
        return out


@dataclasses.dataclass
class Index:
    """Documents' token vectors, contiguous per document (``offsets`` [D + 1])."""
    texts: list[str]
    offsets: np.ndarray
    codec: residual_codec.ResidualCodec | None
    stored: object            # residual_codec.Compressed, or float32 [N, k] (nbits=0)

    def vectors(self) -> np.ndarray:
        if self.codec is None:
            return self.stored
        return residual_codec.decompress(self.codec, self.stored)

    def nbytes_per_vector(self) -> float:
        n = int(self.offsets[-1])
        return self.stored.nbytes / max(n, 1)

    def scores(self, q_qk: np.ndarray, vectors: np.ndarray | None = None) -> np.ndarray:
        """[D]: MaxSim of one query's vectors with every document (0 for an empty one)."""
        v = self.vectors() if vectors is None else vectors
        sims = q_qk @ v.T                                   # [N_q, N]
        lengths = np.diff(self.offsets)
        best = np.zeros((len(self.texts), len(q_qk)), np.float32)
        nonempty = lengths > 0
        best[nonempty] = np.maximum.reduceat(sims, self.offsets[:-1][nonempty], axis=1).T
        return best.sum(axis=1)

    def search(self, q_qk: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
        s = self.scores(q_qk)
        top = np.argsort(-s, kind="stable")[:k]
        return [(int(i), float(s[i])) for i in top]


def build_index(retriever: Retriever, texts: list[str], nbits: int = 2,
                num_centroids: int = 0, seed: int = 0) -> Index:
    docs = retriever.documents(texts)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    vecs = np.concatenate(docs).astype(np.float32)
    if nbits == 0:
        return Index(list(texts), offsets, None, vecs)
    c = num_centroids or min(len(vecs), 4 * int(np.sqrt(len(vecs))))
    codec = residual_codec.fit(vecs, c, nbits, seed)
    return Index(list(texts), offsets, codec, residual_codec.compress(codec, vecs))


def held_out_pairs(retriever: Retriever) -> retrieval.Pairs:
    cfg = retriever.cfg
    return retrieval.mine_pairs(load_corpus(cfg.data), cfg.data.records)["validation"]


def held_out_metrics(retriever: Retriever, index: Index, queries: list[str]) -> dict:
    """MRR@10, recall@1 / @10 of query i against ``index`` (gold: document i)."""
    v = index.vectors()
    scores = np.stack([index.scores(q, v) for q in retriever.queries(queries)])
    ranks = np.asarray(li.gold_ranks(scores))
    sums = li.ranking_sums(ranks, np.ones(len(ranks), np.float32))
    n = float(sums["n"])
    return {"mrr@10": float(sums["rr@10"]) / n, "recall@1": float(sums["hits@1"]) / n,
            "recall@10": float(sums["hits@10"]) / n, "queries": n}


def save_index(index: Index, path: str) -> None:
    arrays = {"offsets": index.offsets,
              "texts": np.frombuffer(json.dumps(index.texts).encode(), np.uint8)}
    if index.codec is None:
        arrays["vectors"] = index.stored
    else:
        c = index.codec
        arrays.update(centroids=c.centroids_ck, cutoffs=c.cutoffs, values=c.values,
                      nbits=np.int32(c.nbits), codes=index.stored.codes_n,
                      packed=index.stored.packed_nb)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue(), checksum=True)


def load_index(path: str) -> Index:
    z = np.load(io.BytesIO(read_checked(path)))
    texts = json.loads(z["texts"].tobytes().decode())
    if "vectors" in z:
        return Index(texts, z["offsets"], None, z["vectors"])
    codec = residual_codec.ResidualCodec(z["centroids"], z["cutoffs"], z["values"],
                                         int(z["nbits"]))
    return Index(texts, z["offsets"], codec, residual_codec.Compressed(z["codes"], z["packed"]))
