"""Mixed precision of the update: 16-bit storage, float32 arithmetic.

A run stores its parameters in ``model.param_dtype`` and Adam's moments in
``optim.state_dtype`` ("" = the params' dtype); the forward and backward compute in
``model.dtype`` (docs/architecture.md, "Mixed precision"). Whatever is stored, the
arithmetic of an update is float32: gradients are brought to float32 before they are
accumulated, clipped and measured (``upcast``), Adam's moments are read into float32,
updated, bias-corrected and turned into the step there and only rounded when stored
(``scale_by_adam_stored``), and ``optax.apply_updates`` adds the float32 step to the
params before rounding the sum to their dtype. With float32 everywhere (the default)
every cast here is the identity and the update is optax's AdamW bit for bit.

optax has ``mu_dtype`` for the first moment only (its second moment keeps the dtype it
was created with, and both are updated in the dtype of the incoming gradients), hence the
wrapper below rather than ``optax.adamw(mu_dtype=...)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# optim.state_dtype: "" stores the moments in the params' dtype. float16 is not offered:
# Adam's second moment (squared gradients, ~1e-10 and below) underflows in it.
STATE_DTYPES = ("", "float32", "bfloat16")


def at_least_f32(dtype):
    """float32 for 16-bit floats; any other dtype (float32, integers) as it is."""
    return jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.floating) \
        else jnp.dtype(dtype)


def upcast(tree):
    """Floating leaves of ``tree`` in at least float32 (float32 leaves are returned as they
    are, so a float32 tree passes through unchanged)."""
    return jax.tree.map(lambda x: x.astype(at_least_f32(x.dtype)), tree)


def _cast(tree, dtype):
    return tree if dtype is None else jax.tree.map(lambda x: x.astype(dtype), tree)


def scale_by_adam_stored(b1: float, b2: float, eps: float, state_dtype: str = ""
                         ) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` computed in float32 with its moments ``mu`` and ``nu``
    stored in ``state_dtype`` ("" = the params' dtype).

    The state is optax's ``ScaleByAdamState`` (count, mu, nu), so checkpoints and ExCP
    (kyx/checkpoint/excp_optax.py) read it as they read optax's; only the dtypes of
    mu / nu change."""
    inner = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    stored = jnp.dtype(state_dtype) if state_dtype else None

    def init_fn(params):
        state = inner.init(params)        # moments like the params
        return state._replace(mu=_cast(state.mu, stored), nu=_cast(state.nu, stored))

    def update_fn(updates, state, params=None):
        del params
        kept = jax.tree.map(lambda m: m.dtype, state.mu)
        state32 = state._replace(mu=upcast(state.mu), nu=upcast(state.nu))
        steps, new = inner.update(upcast(updates), state32)
        like = lambda t: jax.tree.map(lambda x, d: x.astype(d), t, kept)  # noqa: E731
        return steps, new._replace(mu=like(new.mu), nu=like(new.nu))

    return optax.GradientTransformation(init_fn, update_fn)
