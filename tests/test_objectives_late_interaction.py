"""ColBERT late interaction (kyx/objectives/late_interaction.py) against plain-numpy loops
written here; masked tokens (padding, document punctuation) contribute nothing."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.objectives import late_interaction as li

BQ, NQ, BD, TD, K = 3, 5, 4, 7, 8


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BQ, NQ, K)).astype(np.float32)
    d = rng.normal(size=(BD, TD, K)).astype(np.float32)
    q_mask = np.ones((BQ, NQ), np.float32)
    q_mask[1, 3:] = 0                    # a query with padding
    d_mask = (rng.random((BD, TD)) > 0.3).astype(np.float32)
    d_mask[0, :] = [1, 1, 0, 1, 0, 0, 0]  # punctuation in the middle, padding at the end
    d_mask[2, :] = 0                     # a document without one unmasked token
    return q, q_mask, d, d_mask


def _np_embed(x, mask):
    out = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(*mask.shape):
        if mask[idx]:
            v = x[idx].astype(np.float64)
            out[idx] = v / math.sqrt(sum(float(c) * float(c) for c in v))
    return out


def _np_maxsim(q, q_mask, d, d_mask):
    eq, ed = _np_embed(q, q_mask), _np_embed(d, d_mask)
    out = np.zeros((q.shape[0], d.shape[0]))
    for a in range(q.shape[0]):
        for b in range(d.shape[0]):
            total = 0.0
            for i in range(q.shape[1]):
                if not q_mask[a, i]:
                    continue
                sims = [float(eq[a, i] @ ed[b, j]) for j in range(d.shape[1]) if d_mask[b, j]]
                total += max(sims) if sims else 0.0
            out[a, b] = total
    return out


def _scores(name, q, q_mask, d, d_mask):
    return li.SCORINGS.get(name)(li.token_embeddings(q, q_mask), q_mask,
                                 li.token_embeddings(d, d_mask), d_mask)


def test_masked_tokens_are_zero_and_others_unit():
    q, q_mask, _, _ = _inputs()
    e = np.asarray(li.token_embeddings(q, q_mask))
    np.testing.assert_array_equal(e[1, 3:], 0.0)
    np.testing.assert_allclose(np.linalg.norm(e[0], axis=-1), 1.0, atol=1e-6)


def test_maxsim_equals_numpy_reference_with_masks():
    q, q_mask, d, d_mask = _inputs()
    got = np.asarray(_scores("maxsim", q, q_mask, d, d_mask))
    assert got.shape == (BQ, BD)
    np.testing.assert_allclose(got, _np_maxsim(q, q_mask, d, d_mask), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, 2], 0.0)   # no unmasked document token


def test_masked_tokens_take_no_part_in_the_max():
    """A zero vector would offer similarity 0; with every real similarity negative the
    score must stay negative (masking to -inf, not to 0)."""
    q = np.zeros((1, 1, K), np.float32)
    q[0, 0, 0] = 1.0
    d = np.zeros((1, 2, K), np.float32)
    d[0, 0, 0] = -1.0
    d[0, 1, 0] = 1.0          # masked: would give +1
    score = _scores("maxsim", q, np.ones((1, 1)), d, np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(np.asarray(score), [[-1.0]], atol=1e-6)


@pytest.mark.parametrize("name", ["maxsim", "mean_pool"])
def test_perturbing_masked_document_and_query_tokens_changes_nothing(name):
    q, q_mask, d, d_mask = _inputs()
    base = np.asarray(_scores(name, q, q_mask, d, d_mask))
    rng = np.random.default_rng(1)
    d2 = np.where(d_mask[..., None] > 0, d, 100 * rng.normal(size=d.shape)).astype(np.float32)
    q2 = np.where(q_mask[..., None] > 0, q, 100 * rng.normal(size=q.shape)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(_scores(name, q2, q_mask, d2, d_mask)), base)
    d3 = d.copy()
    d3[0, 0] *= -1            # an unmasked token does matter
    assert not np.allclose(np.asarray(_scores(name, q, q_mask, d3, d_mask))[:, 0], base[:, 0])


def test_masked_tokens_get_zero_gradient_and_all_gradients_are_finite():
    q, q_mask, d, d_mask = _inputs()

    def f(d):
        return jnp.sum(_scores("maxsim", q, q_mask, d, d_mask) * jnp.arange(1.0, BD + 1))

    g = np.asarray(jax.grad(f)(jnp.asarray(d)))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[d_mask == 0], 0.0)


def test_maxsim_gradient_matches_finite_differences():
    q, q_mask, d, d_mask = _inputs()
    q64 = jnp.asarray(q, jnp.float32)

    def f(qv):
        return jnp.sum(_scores("maxsim", qv, q_mask, d, d_mask) ** 2)

    g = np.asarray(jax.grad(f)(q64))
    eps = 1e-2
    for idx in [(0, 0, 0), (1, 2, 3), (2, 4, 7)]:
        up, dn = q.copy(), q.copy()
        up[idx] += eps
        dn[idx] -= eps
        fd = (float(f(jnp.asarray(up))) - float(f(jnp.asarray(dn)))) / (2 * eps)
        np.testing.assert_allclose(g[idx], fd, rtol=2e-2, atol=2e-3)


def test_mean_pool_is_cosine_of_masked_means():
    q, q_mask, d, d_mask = _inputs()
    eq, ed = _np_embed(q, q_mask), _np_embed(d, d_mask)
    got = np.asarray(_scores("mean_pool", q, q_mask, d, d_mask))
    for a in range(BQ):
        mq = eq[a][q_mask[a] > 0].mean(0)
        for b in range(BD):
            if not d_mask[b].any():
                assert got[a, b] == 0.0
                continue
            md = ed[b][d_mask[b] > 0].mean(0)
            want = mq @ md / np.linalg.norm(mq) / np.linalg.norm(md)
            np.testing.assert_allclose(got[a, b], want, rtol=1e-5, atol=1e-5)


def test_contrastive_loss_in_batch_and_hard_negatives():
    s = np.array([[3.0, 1.0, 0.0, 2.5], [0.5, 0.2, 1.0, -1.0], [0.0, 0.0, 2.0, 4.0]],
                 np.float32)     # 3 queries, 3 in-batch documents + 1 hard negative
    loss, m = li.contrastive_loss(jnp.asarray(s), scale=2.0)
    want = np.mean([math.log(np.exp(2 * s[i]).sum()) - 2 * s[i, i] for i in range(3)])
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    np.testing.assert_allclose(float(m["accuracy"]), 1 / 3)   # query 1 and 2 lose
    # a padding query (weight 0) is neither counted nor a negative of the others
    w = jnp.asarray([1.0, 0.0, 1.0])
    loss_w, m_w = li.contrastive_loss(jnp.asarray(s), 2.0, w)
    want_w = np.mean([math.log(np.exp(2 * s[i, [j for j in range(4) if j != 1]]).sum())
                      - 2 * s[i, i] for i in (0, 2)])
    np.testing.assert_allclose(float(loss_w), want_w, rtol=1e-6)
    assert np.isfinite(np.asarray(jax.grad(lambda x: li.contrastive_loss(x, 2.0, w)[0])(
        jnp.asarray(s)))).all()


def test_gold_ranks_and_ranking_sums():
    s = np.array([[1.0, 2.0, 0.0], [0.0, 5.0, 5.0], [0.0, 9.0, 0.5]], np.float32)
    ranks = np.asarray(li.gold_ranks(jnp.asarray(s)))
    np.testing.assert_array_equal(ranks, [2, 2, 2])            # a tie counts against gold
    ranks_v = np.asarray(li.gold_ranks(jnp.asarray(s), jnp.asarray([1.0, 0.0, 1.0])))
    np.testing.assert_array_equal(ranks_v, [1, 2, 1])
    const = np.asarray(li.gold_ranks(jnp.zeros((4, 4))))
    np.testing.assert_array_equal(const, [4, 4, 4, 4])          # constant scorer: last
    sums = li.ranking_sums(jnp.asarray([1, 3, 12]), jnp.asarray([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(float(sums["rr@10"]), 1 + 1 / 3)
    assert float(sums["hits@1"]) == 1 and float(sums["hits@10"]) == 2 and float(sums["n"]) == 3
