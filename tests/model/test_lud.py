"""Lexical Unit Decoding (kyx/model/lud.py) against a reference written here from the
acceptance rule alone: full forward passes without a cache, one step at a time."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.model import Decoder, ModelConfig
from kyx.model.decode import generate, pad_prompts
from kyx.model.lud import lud_generate_padded, mine_units

PH = 8
PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7], [5], [11, 12, 13, 14]]


def _model(position="rope"):
    # a larger init scale gives peaked distributions, so that parallel positions pass
    cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      position=position, init_std=0.3)
    model = Decoder(cfg)
    params = nn.unbox(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])
    return model, params


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


WIDTH = 64
N = 12


@functools.cache
def _setup(position="rope"):
    """Model, params and a jitted full forward over one padded width (no cache)."""
    model, params = _model(position)
    fn = jax.jit(lambda x: model.apply({"params": params}, x)[0][0])
    forward = lambda tokens: np.asarray(  # noqa: E731
        fn(jnp.asarray([tokens + [0] * (WIDTH - len(tokens))], jnp.int32)))
    return model, params, forward


def reference(forward, prompt, n, k, alpha, eos=None, repetition_control=True):
    """Greedy LUD by the rule: feed the accepted structure (placeholders inside units) and
    k-1 placeholders, accept the leading run of confident positions."""
    inputs, out, forwards = list(prompt), [], 0
    while len(out) < n:
        x = inputs + [PH] * (k - 1)
        # a causal model: the padding after x changes nothing before it
        logits = forward(x)[len(x) - k: len(x)].astype(np.float64)
        forwards += 1
        probs = _softmax(logits)
        toks, conf = probs.argmax(-1), probs.max(-1)
        j = 1
        while (j < k and alpha < 1.0 and conf[j] >= alpha and toks[j - 1] != eos
               and not (repetition_control and toks[j] == toks[j - 1])):
            j += 1
        acc = [int(t) for t in toks[:min(j, n - len(out))]]
        out += acc
        inputs += [PH] * (len(acc) - 1) + [acc[-1]]
        if eos is not None and eos in acc:
            return out[:out.index(eos)], forwards, inputs
    return out, forwards, inputs


def _alpha(forward, q):
    """A confidence quantile of the model, so that some parallel positions pass."""
    probs = _softmax(forward(PROMPTS[0] + [PH] * 3)[:10].astype(np.float64))
    return float(np.quantile(probs.max(-1), q))


def _lud(model, params, alpha, k=4, n=N, eos=None, temperature=0.0, rng=0, **kw):
    tokens, lengths, _ = pad_prompts(PROMPTS)
    return lud_generate_padded(model, params, jnp.asarray(tokens), jnp.asarray(lengths),
                               jax.random.key(rng), max_new_tokens=n, k=k, ph_id=PH,
                               alpha=alpha, temperature=temperature, eos_id=eos,
                               return_cache=True, **kw)


def _rows(out):
    return [np.asarray(out["tokens"][i][:int(out["lengths"][i])]).tolist()
            for i in range(len(PROMPTS))]


def test_alpha_one_is_ar_decoding_greedy_and_sampled():
    model, params, _ = _setup()
    out = _lud(model, params, 1.0)
    greedy = generate(model, params, PROMPTS, jax.random.key(0), max_new_tokens=N,
                      temperature=0.0)
    assert _rows(out) == greedy
    assert np.asarray(out["forwards"]).tolist() == [N] * len(PROMPTS)
    # sampling: position 1 uses generate's per-token keys, so the samples are the same
    sampled = _lud(model, params, 1.0, temperature=1.0, rng=3)
    plain = generate(model, params, PROMPTS, jax.random.key(3), max_new_tokens=N,
                     temperature=1.0)
    assert _rows(sampled) == plain != greedy


def _check_cache(model, params, out, i, inputs):
    """Visible slots of row i equal the cache of one forward over the accepted structure
    (a run that never saw the rejected placeholders)."""
    frontier = int(out["frontier"][i])
    assert frontier == len(inputs) - 1          # the last accepted token is not fed yet
    x = jnp.asarray([inputs[:frontier] + [0] * (WIDTH - frontier)], jnp.int32)
    cfg = model.cfg
    shape = (cfg.num_layers, 1, WIDTH, cfg.kv_heads, cfg.dim_per_head)
    cache = {"k": jnp.zeros(shape), "v": jnp.zeros(shape)}
    _, aux = model.apply({"params": params}, x, cache=cache)
    for name in ("k", "v"):
        np.testing.assert_allclose(np.asarray(out["cache"][name][:, i, :frontier]),
                                   np.asarray(aux["cache"][name][:, 0, :frontier]), atol=1e-5)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_greedy_lud_equals_reference_and_rolls_back_the_cache(position):
    model, params, forward = _setup(position)
    for q in ((0.3, 0.7) if position == "rope" else (0.5,)):
        alpha = _alpha(forward, q)
        out = _lud(model, params, alpha)
        accepted = np.asarray(out["accepted"])
        assert accepted[1:].sum() > 0, "the test needs some parallel acceptances"
        total_forwards = 0
        for i, p in enumerate(PROMPTS):
            ref, forwards, inputs = reference(forward, p, N, 4, alpha)
            assert _rows(out)[i] == ref, (q, i)
            assert int(out["forwards"][i]) == forwards
            total_forwards += forwards
            _check_cache(model, params, out, i, inputs)
        # every step is counted once in the histogram of accepted lengths
        assert accepted.sum() == total_forwards
        assert (accepted * np.arange(1, 5)).sum() == N * len(PROMPTS)


def test_eos_and_no_repetition_control():
    model, params, forward = _setup()
    alpha = _alpha(forward, 0.3)
    free = _lud(model, params, alpha, repetition_control=False)
    eos = int(free["tokens"][0][5])
    out = _lud(model, params, alpha, eos=eos, repetition_control=False)
    for i, p in enumerate(PROMPTS):
        ref, _, _ = reference(forward, p, N, 4, alpha, eos=eos, repetition_control=False)
        n = int(out["lengths"][i])
        assert np.asarray(out["tokens"][i][:n]).tolist() == ref
        assert (np.asarray(out["tokens"][i][n:]) == eos).all()
    assert int(out["lengths"][0]) <= 5


def test_mining_marks_correct_confident_spans():
    """Mining a sequence the model itself generated greedily: its units are the reference
    decoder's units, so the reconfigured inputs equal the reference's fed structure."""
    model, params, forward = _setup()
    alpha = _alpha(forward, 0.3)
    prompt = PROMPTS[0]
    ref, _, inputs = reference(forward, prompt, N, 4, alpha)
    seq = prompt + ref
    learn = [0] * (len(prompt) - 1) + [1] * len(ref) + [0]
    width = 32
    toks = np.zeros((2, width), np.int32)
    lrn = np.zeros((2, width), np.int32)
    toks[0, :len(seq)], lrn[0, :len(seq)] = seq, learn
    toks[1, :3] = [1, 2, 3]                      # a row with nothing to learn
    mined = mine_units(model, params, jnp.asarray(toks), jnp.asarray(lrn), k=4, ph_id=PH,
                       alpha=alpha)
    ph = np.asarray(mined["placeholder"][0, :len(seq)])
    reconfigured = np.where(ph, PH, seq)[:len(inputs)].tolist()
    assert reconfigured == inputs[:len(seq)]
    assert not np.asarray(mined["placeholder"][1]).any() and int(mined["units"][1]) == 0
    assert int(mined["unit_tokens"][0]) == int(ph.sum()) + int(mined["units"][0])
    # a wrong true token ends the unit before it: the first unit starts at frontier f
    # (its first interior input is f + 1); corrupting token f + 2 (offset 1's target)
    # leaves a one-token step there
    first = int(np.flatnonzero(ph)[0])
    wrong = toks.copy()
    wrong[0, first + 1] = (seq[first + 1] + 1) % 64
    mined2 = mine_units(model, params, jnp.asarray(wrong), jnp.asarray(lrn), k=4, ph_id=PH,
                        alpha=alpha)
    assert not bool(mined2["placeholder"][0, first])
    np.testing.assert_array_equal(np.asarray(mined2["placeholder"][0, :first]), ph[:first])
