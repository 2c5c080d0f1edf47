"""ColBERTv2 residual compression (kyx/model/residual_codec.py): exact bucket round trip,
quantile buckets, storage size, reconstruction improving with bits."""
import numpy as np
import pytest

from kyx.model import residual_codec as rc


def _clustered(n=600, k=16, clusters=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, k))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, k))
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("nbits", [1, 2])
def test_buckets_round_trip_and_storage(nbits):
    x = _clustered()
    codec = rc.fit(x, 8, nbits)
    assert codec.cutoffs.shape == (2 ** nbits - 1,) and codec.values.shape == (2 ** nbits,)
    assert np.all(np.diff(codec.cutoffs) > 0)
    np.testing.assert_allclose(np.linalg.norm(codec.centroids_ck, axis=-1), 1.0, atol=1e-6)
    comp = rc.compress(codec, x)
    assert comp.packed_nb.shape == (len(x), 16 * nbits // 8)
    assert codec.bytes_per_vector() == 2 + 16 * nbits // 8
    assert comp.nbytes == len(x) * codec.bytes_per_vector()
    # decoding = centroid + the bucket value of each dimension (independently computed here)
    resid = x - codec.centroids_ck[comp.codes_n]
    buckets = np.sum(resid[..., None] >= codec.cutoffs, axis=-1)
    want = codec.centroids_ck[comp.codes_n] + codec.values[buckets]
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(rc.decompress(codec, comp), want, rtol=1e-5, atol=1e-6)
    # the buckets are residual quantiles: about equally filled
    counts = np.bincount(buckets.reshape(-1), minlength=2 ** nbits) / buckets.size
    np.testing.assert_allclose(counts, 1 / 2 ** nbits, atol=0.02)


def test_more_bits_reconstruct_better():
    x = _clustered()
    cos = {}
    for nbits in (1, 2):
        codec = rc.fit(x, 8, nbits)
        cos[nbits] = float(np.mean(np.sum(rc.decompress(codec, rc.compress(codec, x)) * x, -1)))
    centroid_only = float(np.mean(np.max(x @ codec.centroids_ck.T, axis=-1)))
    assert centroid_only < cos[1] < cos[2] <= 1.0
    assert cos[2] > 0.97


def test_bad_arguments():
    x = _clustered(n=20)
    with pytest.raises(ValueError, match="nbits"):
        rc.fit(x, 4, nbits=3)
    with pytest.raises(ValueError, match="num_centroids"):
        rc.fit(x, 21)
