"""Preference and SFT losses against values computed here, independently, in plain math."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kyx.objectives import preference as pref
from kyx.objectives import sft

# Fixed summed log-probs for three pairs (policy / reference, chosen / rejected).
PC, PR = [-10.0, -12.5, -8.0], [-11.0, -12.0, -15.0]
RC, RR = [-10.5, -12.0, -9.0], [-10.0, -12.5, -14.0]
NC, NR = [5.0, 6.0, 4.0], [5.0, 4.0, 7.0]


def logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def arr(x):
    return jnp.asarray(x, jnp.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(float(a), b, rtol=tol, atol=tol)


def test_dpo_is_log2_when_policy_equals_reference():
    loss, m = pref.dpo(arr(PC), arr(PR), arr(PC), arr(PR), beta=0.1)
    close(loss, math.log(2.0))
    close(m["rewards/margin"], 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_dpo_and_cdpo(eps):
    beta = 0.1
    want = []
    for pc, pr, rc, rr in zip(PC, PR, RC, RR):
        d = (pc - rc) - (pr - rr)
        want.append(-(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d))
    loss, m = pref.dpo(arr(PC), arr(PR), arr(RC), arr(RR), beta, eps)
    close(loss, sum(want) / 3)
    margins = [beta * ((pc - rc) - (pr - rr)) for pc, pr, rc, rr in zip(PC, PR, RC, RR)]
    close(m["rewards/margin"], sum(margins) / 3)
    close(m["rewards/accuracy"], sum(x > 0 for x in margins) / 3)


def test_dpo_weights_ignore_padding_rows():
    w = arr([1.0, 1.0, 0.0])
    loss, _ = pref.dpo(arr(PC), arr(PR), arr(RC), arr(RR), 0.1, 0.0, w)
    two, _ = pref.dpo(arr(PC[:2]), arr(PR[:2]), arr(RC[:2]), arr(RR[:2]), 0.1)
    close(loss, float(two))


def test_ipo_uses_length_averaged_logps():
    tau = 0.1
    want = [((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * tau)) ** 2
            for pc, pr, rc, rr, nc, nr in zip(PC, PR, RC, RR, NC, NR)]
    loss, _ = pref.ipo(arr(PC), arr(PR), arr(RC), arr(RR), arr(NC), arr(NR), tau)
    close(loss, sum(want) / 3, 1e-4)


def test_simpo():
    beta, ratio = 2.0, 0.25
    want = [-logsig(beta * pc / nc - beta * pr / nr - beta * ratio)
            for pc, pr, nc, nr in zip(PC, PR, NC, NR)]
    loss, _ = pref.simpo(arr(PC), arr(PR), arr(NC), arr(NR), beta, ratio)
    close(loss, sum(want) / 3)


def test_orpo():
    lam = 0.1
    ratio = []
    for pc, pr, nc, nr in zip(PC, PR, NC, NR):
        mc, mr = pc / nc, pr / nr
        log_odds = (mc - math.log(1 - math.exp(mc))) - (mr - math.log(1 - math.exp(mr)))
        ratio.append(-logsig(log_odds))
    nll = -sum(PC) / sum(NC)
    loss, m = pref.orpo(arr(PC), arr(PR), arr(NC), arr(NR), lam)
    close(loss, nll + lam * sum(ratio) / 3)
    close(m["orpo/nll"], nll)


def test_kto_with_mismatched_kl_estimate():
    beta, ld, lu = 0.1, 1.0, 1.5
    pol, ref = [-10.0, -20.0, -15.0, -9.0], [-11.0, -18.0, -15.5, -9.5]
    kl_pol, kl_ref = [-30.0, -25.0, -28.0, -31.0], [-31.0, -27.0, -27.5, -30.0]
    good = [1, 0, 1, 0]
    z0 = max(0.0, sum(a - b for a, b in zip(kl_pol, kl_ref)) / 4)
    want = []
    for p, r, g in zip(pol, ref, good):
        x = p - r
        want.append(ld * (1 - sig(beta * (x - z0))) if g else lu * (1 - sig(beta * (z0 - x))))
    loss, m = pref.kto(arr(pol), arr(ref), arr(kl_pol), arr(kl_ref), jnp.asarray(good),
                       beta, ld, lu)
    close(loss, sum(want) / 4)
    close(m["kto/z0"], z0)


def test_kto_z0_is_clamped_at_zero():
    _, m = pref.kto(arr([-1.0]), arr([-1.0]), arr([-5.0, -5.0]), arr([-1.0, -1.0]),
                    jnp.asarray([1]), 0.1)
    close(m["kto/z0"], 0.0)


def test_npo():
    beta = 0.1
    want = [(2 / beta) * math.log1p(math.exp(beta * (p - r))) for p, r in zip(PR, RR)]
    loss, _ = pref.npo(arr(PR), arr(RR), beta)
    close(loss, sum(want) / 3)


@pytest.mark.parametrize("table", ["none", "small", "large"])
def test_bradley_terry_with_llama2_margins(table):
    rc, rr = [1.5, -0.5, 0.2, 0.9, 0.0], [0.5, 0.5, 0.1, -2.0, 1.0]
    strength = [3, 2, 1, 0, -1]
    values = {"none": [0, 0, 0, 0], "small": [0, 1 / 3, 2 / 3, 1], "large": [0, 1, 2, 3]}[table]
    margins = [values[s] if s >= 0 else 0.0 for s in strength]
    want = [-logsig(c - r - m) for c, r, m in zip(rc, rr, margins)]
    margin_b = pref.strength_margin(jnp.asarray(strength), table)
    np.testing.assert_allclose(np.asarray(margin_b), margins, atol=1e-7)
    loss, m = pref.bradley_terry(arr(rc), arr(rr), margin_b)
    close(loss, sum(want) / 5)
    close(m["accuracy"], 3 / 5)
    close(m["margin"], sum(c - r for c, r in zip(rc, rr)) / 5)


def test_unlikelihood_and_sft_loss():
    logp = np.log(np.asarray([[0.5, 0.9, 0.1, 0.999999]], np.float32))
    neg_p = np.asarray([[0.2, 0.3, 0.7, 0.4]], np.float32)
    neg_logp, neg_log1m = np.log(neg_p), np.log1p(-neg_p)
    pos = np.asarray([[1, 1, 0, 0]], np.float32)
    neg = np.asarray([[0, 1, 1, 0]], np.float32)
    ce = -(math.log(0.5) + math.log(0.9)) / 2
    ul = -(math.log(1 - 0.3) + math.log(1 - 0.7)) / 2
    loss, m = sft.sft_loss(arr(logp), arr(pos), arr(neg_logp), arr(neg), neg_weight=0.5,
                           neg_log1m_p_bt=arr(neg_log1m))
    close(m["ce"], ce)
    close(m["neg_unlikelihood"], ul)
    close(loss, ce + 0.5 * ul)
    close(m["neg_logp"], (math.log(0.3) + math.log(0.7)) / 2)
    plain, _ = sft.sft_loss(arr(logp), arr(pos), arr(neg_logp), arr(neg), neg_weight=0.0,
                            neg_log1m_p_bt=arr(neg_log1m))
    close(plain, ce)
    alone, m = sft.sft_loss(arr(logp), arr(pos))
    close(alone, ce)
    assert "neg_logp" not in m


def test_token_log1m_p_is_exact_for_confident_tokens():
    """The repeated, very confident token negative feedback targets: target logit 18 above
    12 others. −log(1 − p) = 18 − log 12 + log(1 + 12 e^-18) and its gradient in the target
    logit is p (≈ 1), where a clamp of log p would give 13.8 and 0."""
    logits = np.zeros((1, 1, 13), np.float32)
    logits[0, 0, 3] = 18.0
    tgt = jnp.asarray([[3]])

    def ul(z):
        return -sft.token_logps_and_log1m_ps(z, tgt)[1].sum()
    p = 1.0 / (1.0 + 12.0 * math.exp(-18.0))
    close(ul(jnp.asarray(logits)), 18.0 - math.log(12.0) + math.log1p(12.0 * math.exp(-18.0)))
    grad = np.asarray(jax.grad(ul)(jnp.asarray(logits)))
    np.testing.assert_allclose(grad[0, 0, 3], p, rtol=1e-6)
    np.testing.assert_allclose(grad[0, 0].sum(), 0.0, atol=1e-6)
    logp, _ = sft.token_logps_and_log1m_ps(jnp.asarray(logits), tgt)
    close(logp[0, 0], -math.log1p(12.0 * math.exp(-18.0)))  # not rounded to 0
    assert float(logp[0, 0]) < 0


def test_orpo_keeps_a_gradient_near_certain_responses():
    """ORPO's log odds at mean log-prob −1e-7 (P(y) ≈ 1): finite, with a gradient."""
    mean_c = jnp.asarray([-1e-7])
    lo = lambda x: (x - sft.log1m_exp(x))[0]  # noqa: E731
    close(lo(mean_c), -1e-7 - math.log(-math.expm1(-1e-7)))
    assert abs(float(jax.grad(lo)(mean_c)[0])) > 1e6


def test_log1m_exp_is_finite_near_zero_and_accurate():
    x = arr([-1e-9, -1e-6, -0.1, -0.69, -0.7, -5.0, -50.0])
    got = np.asarray(sft.log1m_exp(x))
    assert np.all(np.isfinite(got))
    for xi, gi in zip([-0.1, -0.69, -0.7, -5.0, -50.0], got[2:]):
        close(gi, math.log(-math.expm1(xi)))


def test_preference_loss_dispatch_and_llama3_nll():
    cfg = pref.default_config()
    cfg.nll_coef = 0.2
    pol = {"chosen": arr(PC), "rejected": arr(PR), "n_chosen": arr(NC), "n_rejected": arr(NR),
           "nll_chosen": arr([-12.0, -14.0, -9.0]), "nll_n_chosen": arr([6.0, 7.0, 5.0])}
    ref = {"chosen": arr(RC), "rejected": arr(RR)}
    loss, m = pref.preference_loss(cfg, pol, ref, {})
    dpo_loss, _ = pref.dpo(arr(PC), arr(PR), arr(RC), arr(RR), 0.1)
    close(loss, float(dpo_loss) + 0.2 * (35.0 / 18.0))
    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.name = "nope"
    with pytest.raises(Exception, match="loss.name"):
        pref.check_config(bad)
