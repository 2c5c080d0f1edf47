"""Row-wise int8 weight-only quantisation (the Llama 3 row-wise scheme) for decoding.

Each matmul weight ``w`` is stored as int8 values ``q`` and one float32 scale per output
channel: ``scale = max|w| / 127`` over the weight's contraction axes, ``q = round(w /
scale)`` (symmetric, round to nearest, so ``|q| <= 127``), and ``w ~ q * scale``. Per
element the error is at most ``scale / 2``; per output of ``x @ w`` at most
``||x||_1 * scale / 2`` (tests/model/test_quant.py checks both).

Quantised: the attention projections (wq, wk, wv, wo; PLA's wk_enc, wv_enc), the SwiGLU /
shared-expert / expert FFN matrices and the output head: the weights a decode step
streams through its matmuls.
Kept float32: norms, biases, the MoE router (routing runs in float32 at highest
precision) and an untied embedding table (a gather reads only the rows of the batch's
tokens). A tied embedding is the output head too, so it is quantised per vocabulary row
(the head's output channel); its lookup then reads ``q[token] * scale[token]``.

``dequantize_params`` is the identity on float parameters, so every consumer of params
(``decode.generate_padded``, ``LoadedModel.logits``) calls it unconditionally inside its
jit; the float32 weights it produces are temporaries of that program (docs/generation.md
reports what that costs in memory).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kyx.errors import ConfigError

QMAX = 127
FORMATS = ("int8",)

# (parent module, parameter) -> its contraction axes, counted from the end so that
# stacked leading axes (layers, experts) keep one scale per slice
CONTRACTION_AXES = {
    ("attn", "wq"): (-3,),        # [.., d, heads, head_dim]
    ("attn", "wk"): (-3,),
    ("attn", "wv"): (-3,),
    ("attn", "wo"): (-3, -2),     # [.., heads, head_dim, d]
    ("attn", "wk_enc"): (-3,),    # prefix linear attention's encoder projections
    ("attn", "wv_enc"): (-3,),
    ("head", "kernel"): (-1,),    # [vocab, d]
    **{(parent, name): (-2,)      # [.., d, f] and [.., f, d] (moe: [.., experts, d, f])
       for parent in ("mlp", "shared", "moe") for name in ("wi_gate", "wi_up", "wo")},
}
TIED_EMBEDDING = ("embed", "embedding")   # [vocab, d]: quantised only when it is the head


@flax.struct.dataclass
class Int8Rows:
    """A weight as int8 values ``q`` (the weight's shape) and float32 ``scale`` (the
    weight's shape with size-1 contraction axes): ``dequantize`` gives ``q * scale``."""
    q: jax.Array
    scale: jax.Array


def quantize(w: jax.Array, axes: tuple[int, ...]) -> Int8Rows:
    """Symmetric row-wise int8: one scale ``max|w| / 127`` per slice over ``axes``; an
    all-zero slice gets scale 0 and q 0."""
    w = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=axes, keepdims=True) / QMAX
    safe = jnp.where(scale > 0, scale, 1.0)
    q = jnp.clip(jnp.round(w / safe), -QMAX, QMAX).astype(jnp.int8)
    return Int8Rows(q, scale)


def dequantize(w: Int8Rows) -> jax.Array:
    return w.q.astype(jnp.float32) * w.scale


def _axes_of(path, tied: bool) -> tuple[int, ...] | None:
    names = tuple(getattr(k, "key", None) for k in path[-2:])
    if names == TIED_EMBEDDING:
        return (-1,) if tied else None
    return CONTRACTION_AXES.get(names)


def quantize_params(params: Any, tied: bool = False, fmt: str = "int8") -> Any:
    """``params`` with every matmul weight (CONTRACTION_AXES; the embedding when ``tied``)
    replaced by its ``Int8Rows``; all other leaves unchanged."""
    if fmt not in FORMATS:
        raise ConfigError(f"quantize must be one of {FORMATS} (or None), got {fmt!r}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    axes = [_axes_of(path, tied) for path, _ in flat]
    picked = [(leaf, a) for (_, leaf), a in zip(flat, axes) if a is not None]
    done = iter(_quantize_all([w for w, _ in picked], tuple(a for _, a in picked)))
    leaves = [leaf if a is None else next(done) for (_, leaf), a in zip(flat, axes)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


@functools.partial(jax.jit, static_argnums=1)
def _quantize_all(weights: list, axes: tuple) -> list[Int8Rows]:
    """One compiled program for all weights (op by op it is seconds of dispatch)."""
    return [quantize(w, a) for w, a in zip(weights, axes)]


def _is_quantized(x) -> bool:
    return isinstance(x, Int8Rows)


def dequantize_params(params: Any) -> Any:
    """Float32 params of a (possibly) quantised tree; float leaves pass through."""
    return jax.tree.map(lambda x: dequantize(x) if _is_quantized(x) else x, params,
                        is_leaf=_is_quantized)


def weight_bytes(params: Any) -> int:
    """Bytes the parameters occupy as stored (int8 values + float32 scales when quantised)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))
