"""Sparse autoencoders (kyx/analysis/sae*.py): the TopK forward, the AuxK loss and the
decoder-gradient projection against independent float64 numpy; the ReLU loss by hand;
the initialisation; dictionary recovery on synthetic sparse data."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from kyx.analysis import sae, sae_losses, sae_step
from kyx.analysis.geometric_median import geometric_median
from kyx.errors import ConfigError

D, L, N = 8, 24, 16


def _params(rng, d=D, n=L):
    return {"w_enc_dl": rng.normal(size=(d, n)) / np.sqrt(d), "b_enc_l": rng.normal(size=n) * 0.1,
            "w_dec_ld": rng.normal(size=(n, d)), "b_dec_d": rng.normal(size=d) * 0.3}


def _jax(p):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)


def _np_topk_forward(p, x, k):
    """Independent float64 TopK SAE: argsort per row."""
    pre = (x - p["b_dec_d"]) @ p["w_enc_dl"] + p["b_enc_l"]
    z = np.zeros_like(pre)
    for n in range(len(pre)):
        top = np.argsort(-pre[n])[:k]
        z[n, top] = np.maximum(pre[n, top], 0)
    return pre, z, z @ p["w_dec_ld"] + p["b_dec_d"]


def test_topk_forward_matches_numpy():
    rng = np.random.default_rng(0)
    p, x = _params(rng), rng.normal(size=(N, D))
    cfg = sae.SaeConfig(d=D, n_latents=L, kind="topk", k=5)
    pre, z, xhat = _np_topk_forward(p, x, 5)
    got_pre, got_z, got_xhat = sae.forward(_jax(p), jnp.asarray(x, jnp.float32), cfg)
    np.testing.assert_allclose(got_pre, pre, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_z, z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_xhat, xhat, rtol=1e-5, atol=1e-5)
    assert ((np.asarray(got_z) > 0).sum(axis=1) <= 5).all()


def test_topk_loss_with_aux_k_matches_numpy():
    rng = np.random.default_rng(1)
    p, x = _params(rng), rng.normal(size=(N, D)) + 0.5
    dead = rng.random(L) < 0.5
    k, k_aux, mse_scale = 4, 6, 1.7
    cfg = sae.SaeConfig(d=D, n_latents=L, kind="topk", k=k, k_aux=k_aux)
    pre, z, xhat = _np_topk_forward(p, x, k)
    masked = np.where(dead[None, :], pre, 0.0)
    z_aux = np.zeros_like(pre)
    for n in range(N):
        top = np.argsort(-masked[n])[:k_aux]
        z_aux[n, top] = np.maximum(masked[n, top], 0)
    e = x - xhat
    aux = ((z_aux @ p["w_dec_ld"] - e) ** 2).mean() / ((e - e.mean(axis=0)) ** 2).mean()
    mse = ((xhat - x) ** 2).mean()
    want = mse_scale * mse + aux / 32
    loss, m = sae_losses.topk_loss(_jax(p), jnp.asarray(x, jnp.float32), jnp.asarray(dead),
                                   mse_scale, cfg)
    np.testing.assert_allclose(m["aux_k"], aux, rtol=1e-5)
    np.testing.assert_allclose(m["mse"], mse, rtol=1e-5)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    err, cen = ((xhat - x) ** 2).sum(), ((x - x.mean(axis=0)) ** 2).sum()
    np.testing.assert_allclose(m["nmse"], err / (x ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(m["explained_variance"], 1 - err / cen, rtol=1e-5)
    np.testing.assert_allclose(m["l0"], (z > 0).sum(axis=1).mean(), rtol=1e-6)
    np.testing.assert_array_equal(m["fired_l"], (z > 1e-3).any(axis=0))
    # no dead latent: no AuxK term
    _, m0 = sae_losses.topk_loss(_jax(p), jnp.asarray(x, jnp.float32), jnp.zeros(L, bool),
                                 mse_scale, cfg)
    assert float(m0["aux_k"]) == 0.0


def test_aux_k_gradient_holds_the_residual_fixed():
    """d aux / d params with x − x̂ constant: numpy central differences (float64) of the
    NMSE where only W_dec z_aux moves."""
    rng = np.random.default_rng(2)
    p, x = _params(rng, 4, 6), rng.normal(size=(8, 4))
    dead = np.array([1, 0, 1, 1, 0, 1], bool)
    cfg = sae.SaeConfig(d=4, n_latents=6, kind="topk", k=2, k_aux=3)
    _, _, xhat = _np_topk_forward(p, x, 2)
    e = x - xhat

    def aux_np(w_dec):
        pre = (x - p["b_dec_d"]) @ p["w_enc_dl"] + p["b_enc_l"]
        masked = np.where(dead[None, :], pre, 0.0)
        z_aux = np.zeros_like(pre)
        for n in range(len(x)):
            top = np.argsort(-masked[n])[:3]
            z_aux[n, top] = np.maximum(masked[n, top], 0)
        return ((z_aux @ w_dec - e) ** 2).mean() / ((e - e.mean(axis=0)) ** 2).mean()

    num = np.zeros_like(p["w_dec_ld"])
    for i in np.ndindex(num.shape):
        dp, dm = p["w_dec_ld"].copy(), p["w_dec_ld"].copy()
        dp[i] += 1e-6
        dm[i] -= 1e-6
        num[i] = (aux_np(dp) - aux_np(dm)) / 2e-6
    jp = _jax(p)
    g = jax.grad(lambda w: sae_losses.aux_k(
        {**jp, "w_dec_ld": w}, sae.pre_activations(jp, jnp.asarray(x, jnp.float32)),
        jnp.asarray(e, jnp.float32), jnp.asarray(dead), cfg))(jp["w_dec_ld"])
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-5)


def test_decoder_grad_projection_matches_numpy():
    rng = np.random.default_rng(3)
    w, g = rng.normal(size=(L, D)), rng.normal(size=(L, D))
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    want = g - (g * u).sum(axis=1, keepdims=True) * u
    got = sae.project_decoder_grad(jnp.asarray(g, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs((np.asarray(got) * u).sum(axis=1)).max() < 1e-5
    # the optax transformation projects w_dec_ld's gradient only
    p = _jax(_params(rng))
    grads = jax.tree.map(lambda a: jnp.ones_like(a), p)
    tx = sae.decoder_grad_projection()
    out, _ = tx.update(grads, tx.init(p), p)
    np.testing.assert_allclose(out["w_dec_ld"], sae.project_decoder_grad(grads["w_dec_ld"],
                                                                          p["w_dec_ld"]))
    np.testing.assert_array_equal(out["w_enc_dl"], grads["w_enc_dl"])


def test_relu_loss_by_hand():
    """d = 2, two latents: W_enc = I, b_enc = (0, −1), b_dec = 0, decoder rows (2, 0) and
    (0, 1). x = (3, 1): pre = (3, 0) -> f = (3, 0), x̂ = (6, 0), ‖x − x̂‖² = 9 + 1 = 10;
    the L1 term Σ f_i ‖W_dec[:, i]‖ = 3 · 2 = 6; with λ = 0.5: loss = 10 + 3 = 13."""
    p = {"w_enc_dl": jnp.eye(2), "b_enc_l": jnp.array([0.0, -1.0]),
         "w_dec_ld": jnp.array([[2.0, 0.0], [0.0, 1.0]]), "b_dec_d": jnp.zeros(2)}
    cfg = sae.SaeConfig(d=2, n_latents=2, kind="relu", l1=0.5)
    loss, m = sae_losses.relu_loss(p, jnp.array([[3.0, 1.0]]), None, None, cfg)
    assert float(m["reconstruction"]) == pytest.approx(10.0)
    assert float(m["l1"]) == pytest.approx(6.0)
    assert float(loss) == pytest.approx(13.0)
    assert float(m["l0"]) == 1.0


def test_geometric_median_minimises_the_distance_sum():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(200, 5)), rng.normal(size=(20, 5)) * 0.1 + 50])
    m = geometric_median(x)
    cost = lambda c: np.linalg.norm(x - c, axis=1).sum()  # noqa: E731
    ref = scipy.optimize.minimize(cost, x.mean(axis=0), method="Nelder-Mead",
                                  options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20000}).x
    assert cost(m) <= cost(ref) + 1e-4
    assert np.linalg.norm(m) < 2.0 < np.linalg.norm(x.mean(axis=0))  # robust to the outliers


def test_init_tied_unit_decoder_and_unit_reconstructions():
    rng = np.random.default_rng(5)
    sample = rng.normal(size=(512, D)) + 3.0
    for kind in ("topk", "relu"):
        cfg = sae.SaeConfig(d=D, n_latents=L, kind=kind, k=4)
        p = sae.init_params(cfg, sample, jax.random.key(0))
        np.testing.assert_allclose(np.linalg.norm(p["w_dec_ld"], axis=1), 1.0, rtol=1e-5)
        w_enc = np.asarray(p["w_enc_dl"])
        cos = (w_enc.T * np.asarray(p["w_dec_ld"])).sum(1) / np.linalg.norm(w_enc.T, axis=1)
        np.testing.assert_allclose(cos, 1.0, rtol=1e-5)  # tied: same directions
        np.testing.assert_allclose(p["b_dec_d"], geometric_median(sample), rtol=1e-6)
        u = rng.normal(size=(4096, D))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        _, _, xhat = sae.forward(p, jnp.asarray(u + np.asarray(p["b_dec_d"]), jnp.float32), cfg)
        norms = np.linalg.norm(np.asarray(xhat) - np.asarray(p["b_dec_d"]), axis=1)
        assert abs(norms.mean() - 1.0) < 0.05, (kind, norms.mean())
    assert sae.mse_scale(sample) == pytest.approx(1 / sample.var(axis=0).mean(), rel=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="sae.k"):
        sae.SaeConfig(d=4, n_latents=8, k=9).validate()
    with pytest.raises(ConfigError, match="unknown sae.kind 'topp'.*topk"):
        sae.SaeConfig(d=4, n_latents=8, kind="topp").validate()


def test_dead_latent_counters_in_tokens():
    cfg = sae.SaeConfig(d=2, n_latents=3, dead_tokens=100)
    since = jnp.array([0.0, 90.0, 200.0])
    z = jnp.array([[0.5, 0.0, 0.0], [0.0, 5e-4, 0.0]])  # latent 1 stays below 1e-3
    since = sae.tokens_since_fired(since, sae.fired(z), tokens=20)
    np.testing.assert_array_equal(since, [0.0, 110.0, 220.0])
    np.testing.assert_array_equal(sae.dead(since, cfg), [False, True, True])


# ----------------------------------------------------------------------------- recovery

def _synthetic(d=32, atoms=64, k=3, seed=0):
    key = jax.random.key(seed)
    dict_ad = jax.random.normal(key, (atoms, d))
    dict_ad = dict_ad / jnp.linalg.norm(dict_ad, axis=1, keepdims=True)

    def batch(key, n):
        k_idx, k_mag = jax.random.split(key)
        _, idx_nk = jax.lax.top_k(jax.random.uniform(k_idx, (n, atoms)), k)  # k distinct
        mag_nk = jax.random.uniform(k_mag, (n, k), minval=0.5, maxval=1.5)
        return jnp.einsum("nk,nkd->nd", mag_nk, dict_ad[idx_nk])
    return dict_ad, batch


def _max_cos(true_ad, learned_ld):
    t = true_ad / np.linalg.norm(true_ad, axis=1, keepdims=True)
    lrn = learned_ld / np.linalg.norm(learned_ld, axis=1, keepdims=True)
    return float(np.abs(t @ lrn.T).max(axis=1).mean())


def test_topk_sae_recovers_a_synthetic_dictionary():
    """x = Σ of 3 of 64 random unit atoms in d = 32 (magnitudes U[0.5, 1.5]); a TopK SAE
    with k = 3 finds every atom: mean over atoms of the best cosine with a decoder row
    >= 0.9, where the same score of a random dictionary of the same size is ~0.5."""
    start = time.perf_counter()
    true_ad, batch = _synthetic()
    cfg = sae.SaeConfig(d=32, n_latents=128, kind="topk", k=3, k_aux=64, dead_tokens=20_000)
    sample = np.asarray(batch(jax.random.key(1), 4096))
    params = sae.init_params(cfg, sample, jax.random.key(2))
    scale = sae.mse_scale(sample)
    tx = sae_step.optimizer(optax.adam(3e-3))
    n = 256

    def step(carry, key):
        p, opt, since = carry
        (_, metrics), g = sae_step.loss_and_grads(p, batch(key, n), since, scale, cfg)
        updates, opt = tx.update(g, opt, p)
        p, since, metrics = sae_step.after_update(optax.apply_updates(p, updates), since,
                                                  metrics, n, cfg)
        return (p, opt, since), metrics

    carry = (params, tx.init(params), jnp.zeros(cfg.n_latents))
    (params, _, _), metrics = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks))(
        carry, jax.random.split(jax.random.key(3), 1000))
    score = _max_cos(np.asarray(true_ad), np.asarray(params["w_dec_ld"]))
    random_score = _max_cos(np.asarray(true_ad),
                            np.random.default_rng(0).normal(size=(128, 32)))
    elapsed = time.perf_counter() - start
    assert random_score < 0.7
    assert score >= 0.9, (score, float(metrics["explained_variance"][-1]))
    assert float(metrics["explained_variance"][-1]) > 0.9
    print(f"recovery {score:.3f} (random {random_score:.3f}), {elapsed:.1f} s")
