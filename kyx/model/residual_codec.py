"""ColBERTv2 residual compression of token vectors (Santhanam et al. 2022, §3.2).

Each unit vector x is stored as the id of its nearest centroid c (k-means over the
indexed vectors, centroids re-normalised; nearest = largest dot product) plus its
residual r = x - c quantised to ``nbits`` (1 or 2) bits per dimension. As in ColBERTv2's
``ResidualCodec``, the buckets are global, from quantiles of all residual values: the
2^b - 1 cutoffs at quantiles j / 2^b and the bucket values at (j + 0.5) / 2^b. Decoding
is c + value[bucket] per dimension, re-normalised. Storage per vector: 2 bytes of
centroid id (uint16, up to 65536 centroids) + ceil(k b / 8) bytes of packed buckets, so
k = 128 at 2 bits is 34 bytes instead of 512 (float32).

K-means is spherical (faiss' ``spherical=True``, which ColBERTv2 uses): Lloyd steps
with nearest = largest dot product and centroids = normalised means, from distinct
seeded random vectors, all in matrix products (scipy's ``kmeans2`` takes ~40 s of CPU
on the tiny run's 7k x 128 vectors, this ~1 s); bit packing is numpy's.
"""
from __future__ import annotations

import dataclasses

import numpy as np

NBITS = (1, 2)
CODE_DTYPE = np.uint16


@dataclasses.dataclass(frozen=True)
class ResidualCodec:
    centroids_ck: np.ndarray   # float32 [C, k], unit rows
    cutoffs: np.ndarray        # float32 [2^b - 1], increasing
    values: np.ndarray         # float32 [2^b], the value each bucket decodes to
    nbits: int

    def bytes_per_vector(self) -> int:
        k = self.centroids_ck.shape[1]
        return np.dtype(CODE_DTYPE).itemsize + -(-k * self.nbits // 8)


@dataclasses.dataclass(frozen=True)
class Compressed:
    codes_n: np.ndarray        # CODE_DTYPE [N] centroid ids
    packed_nb: np.ndarray      # uint8 [N, ceil(k b / 8)] packed residual buckets

    @property
    def nbytes(self) -> int:
        return self.codes_n.nbytes + self.packed_nb.nbytes


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_centroid(centroids_ck: np.ndarray, x_nk: np.ndarray) -> np.ndarray:
    return np.argmax(x_nk @ centroids_ck.T, axis=-1).astype(CODE_DTYPE)


def spherical_kmeans(x_nk: np.ndarray, num_centroids: int, iters: int = 20,
                     seed: int = 0) -> np.ndarray:
    """float32 [C, k] unit centroids; an emptied cluster keeps its previous centroid."""
    rng = np.random.default_rng(seed)
    c_ck = x_nk[rng.choice(len(x_nk), num_centroids, replace=False)]
    for _ in range(iters):
        assign_n = nearest_centroid(c_ck, x_nk)
        sums_ck = np.zeros_like(c_ck)
        np.add.at(sums_ck, assign_n, x_nk)
        filled = np.bincount(assign_n, minlength=num_centroids) > 0
        c_ck = np.where(filled[:, None], _unit(sums_ck), c_ck)
    return c_ck.astype(np.float32)


def fit(x_nk: np.ndarray, num_centroids: int, nbits: int = 2, seed: int = 0,
        iters: int = 20) -> ResidualCodec:
    """Centroids and residual buckets of the unit vectors ``x_nk``."""
    if nbits not in NBITS:
        raise ValueError(f"nbits must be one of {NBITS}, got {nbits}")
    x = np.asarray(x_nk, np.float32)
    if not 1 <= num_centroids <= min(len(x), np.iinfo(CODE_DTYPE).max + 1):
        raise ValueError(f"num_centroids must be in [1, min(N={len(x)}, 65536)], got "
                         f"{num_centroids}")
    centroids = spherical_kmeans(x, num_centroids, iters, seed)
    resid = (x - centroids[nearest_centroid(centroids, x)]).reshape(-1)
    n = 2 ** nbits
    q = np.arange(n) / n
    return ResidualCodec(centroids, np.quantile(resid, q[1:]).astype(np.float32),
                         np.quantile(resid, q + 0.5 / n).astype(np.float32), nbits)


def compress(codec: ResidualCodec, x_nk: np.ndarray) -> Compressed:
    x = np.asarray(x_nk, np.float32)
    codes = nearest_centroid(codec.centroids_ck, x)
    buckets_nk = np.searchsorted(codec.cutoffs, x - codec.centroids_ck[codes], side="right")
    bits_nkb = (buckets_nk[..., None] >> np.arange(codec.nbits)) & 1
    return Compressed(codes, np.packbits(bits_nkb.reshape(len(x), -1).astype(np.uint8),
                                         axis=-1))


def decompress(codec: ResidualCodec, comp: Compressed) -> np.ndarray:
    """float32 [N, k] unit vectors."""
    n, k, b = len(comp.codes_n), codec.centroids_ck.shape[1], codec.nbits
    bits_nkb = np.unpackbits(comp.packed_nb, axis=-1, count=k * b).reshape(n, k, b)
    buckets_nk = np.sum(bits_nkb.astype(np.int64) << np.arange(b), axis=-1)
    return _unit(codec.centroids_ck[comp.codes_n] + codec.values[buckets_nk]).astype(np.float32)
