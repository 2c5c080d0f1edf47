"""Row-wise int8 weight-only quantisation: error bounds derived by hand, and which
parameters it touches."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.errors import ConfigError
from kyx.model import Decoder, ModelConfig
from kyx.model.quant import (Int8Rows, dequantize, dequantize_params, quantize,
                             quantize_params, weight_bytes)

F32_EPS = 2.0 ** -23


@pytest.fixture(scope="module")
def tiny():
    """(model, params, jitted apply) of a 2-layer decoder."""
    model = Decoder(ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                                num_kv_heads=2))
    init = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))
    apply = jax.jit(lambda p, t: model.apply({"params": p}, t))
    return model, nn.unbox(init["params"]), apply


@pytest.mark.parametrize("shape, axes", [((2, 32, 4, 8), (-3,)), ((2, 4, 8, 32), (-3, -2)),
                                         ((64, 32), (-1,)), ((2, 3, 32, 16), (-2,))])
def test_error_per_element_at_most_half_a_step_of_its_row(shape, axes):
    """q = round(w / s) with s = max|w| / 127 over the contraction axes: |w/s - q| <= 1/2,
    so |w - q s| <= s / 2 (plus float32 rounding of w / s and q * s: a few ulp of 127 s
    and of |w|); each slice's largest |w| maps to exactly +-127."""
    w = (np.random.default_rng(1).standard_normal(shape)
         * np.linspace(0.1, 3.0, shape[-1])).astype(np.float32)
    qw = jax.jit(quantize, static_argnums=1)(w, axes)
    assert qw.q.dtype == jnp.int8 and qw.scale.dtype == jnp.float32
    assert qw.scale.shape == tuple(1 if i - len(shape) in axes else n
                                   for i, n in enumerate(shape))
    w, q, s = np.asarray(w), np.asarray(qw.q, np.int32), np.asarray(qw.scale)
    np.testing.assert_allclose(s, np.max(np.abs(w), axis=axes, keepdims=True) / 127, rtol=1e-6)
    err = np.abs(w - np.asarray(dequantize(qw)))
    assert np.all(err <= s / 2 + 4 * F32_EPS * (127 * s + np.abs(w)))
    assert np.all(np.max(np.abs(q), axis=axes) == 127)


def test_zero_row_has_zero_scale_and_values():
    w = jnp.zeros((4, 3)).at[:, 1].set(jnp.asarray([1.0, -2.0, 0.5, 0.0]))
    qw = quantize(w, (-2,))
    assert np.asarray(qw.scale).ravel().tolist() == [0.0, pytest.approx(2 / 127), 0.0]
    assert np.isfinite(np.asarray(dequantize(qw))).all()
    assert np.asarray(qw.q)[:, 1].tolist() == [64, -127, 32, 0]


def test_quantizes_matmul_weights_only(tiny):
    _, params, _ = tiny
    qp = quantize_params(params)
    quantized = {jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(
        qp, is_leaf=lambda x: isinstance(x, Int8Rows))[0] if isinstance(x, Int8Rows)}
    assert quantized == {f"['layers']['{m}']['{n}']" for m, names in
                         (("attn", ("wq", "wk", "wv", "wo")), ("mlp", ("wi_gate", "wi_up", "wo")))
                         for n in names} | {"['head']['kernel']"}
    assert qp["embed"]["embedding"] is params["embed"]["embedding"]  # untied: a lookup
    tied = {"embed": {"embedding": params["embed"]["embedding"]}}
    assert isinstance(quantize_params(tied, tied=True)["embed"]["embedding"], Int8Rows)
    # int8 values + one f32 scale per output row: about a quarter of the f32 bytes
    matmul = sum(x.nbytes for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
                 if "norm" not in jax.tree_util.keystr(p) and "embed" not in
                 jax.tree_util.keystr(p))
    saved = weight_bytes(params) - weight_bytes(qp)
    assert 0.70 * matmul < saved < 0.75 * matmul
    with pytest.raises(ConfigError, match="int8"):
        quantize_params(params, fmt="int4")


def test_head_logit_error_within_derived_bound(tiny):
    """With only the head quantised the hidden states h are unchanged, and
    |logit_v - logit'_v| = |sum_d h_d (w_vd - w'_vd)| <= ||h||_1 * s_v / 2."""
    _, params, apply = tiny
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 64)
    logits, aux = apply(params, tokens)
    qhead = quantize(params["head"]["kernel"], (-1,))
    mixed = {**params, "head": {"kernel": dequantize(qhead)}}
    qlogits, _ = apply(mixed, tokens)
    bound_btv = (jnp.sum(jnp.abs(aux["hidden_btd"]), -1)[..., None]
                 * qhead.scale[:, 0][None, None] / 2)
    err = np.abs(np.asarray(qlogits - logits))
    assert np.all(err <= np.asarray(bound_btv) * (1 + 1e-4) + 1e-6)
    assert err.max() > 0  # the head did change


def test_model_logit_error_within_first_order_bound(tiny):
    """Every matmul weight quantised: to first order a logit moves by at most
    sum_w |d logit / d w| * s_w / 2 over all quantised weights (each element moved by at
    most half its row's step); checked with a factor 2 of room for second-order terms on
    the last position's top logit of each row."""
    model, params, apply = tiny
    tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, 64)
    qp = quantize_params(params)
    logits = apply(params, tokens)[0][:, -1]
    qlogits = apply(dequantize_params(qp), tokens)[0][:, -1]
    half_step = jax.tree.map(
        lambda p, q: q.scale / 2 * jnp.ones_like(p) if isinstance(q, Int8Rows)
        else jnp.zeros_like(p), params, qp, is_leaf=lambda x: isinstance(x, Int8Rows))
    top_b = jnp.argmax(logits, -1)

    @jax.jit
    def first_order_bound_b(params):
        jac = jax.jacrev(lambda p: jnp.take_along_axis(
            model.apply({"params": p}, tokens)[0][:, -1], top_b[:, None], -1)[:, 0])(params)
        return sum(jnp.sum(jnp.abs(g) * h, axis=tuple(range(1, g.ndim)))
                   for g, h in zip(jax.tree.leaves(jac), jax.tree.leaves(half_step)))

    bound_b = np.asarray(first_order_bound_b(params))
    for b in range(2):
        v, bound = int(top_b[b]), float(bound_b[b])
        err = abs(float(qlogits[b, v] - logits[b, v]))
        assert 0 < err <= 2 * bound, (err, bound)
