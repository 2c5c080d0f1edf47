"""Bridge between optax Adam(W) state pytrees and the flat name -> array dicts ExCP stores."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
import optax


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


SCANNED = ("layers", "dense_layers", "moe_layers")


def scanned_layers(name: str) -> bool:
    """Default unstack rule: kyx's nn.scan stacks these subtrees on a leading layer axis."""
    return name.split("/", 1)[0] in SCANNED


def tree_to_flat(tree, unstack: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """{'a/b/kernel': float32 host array} for every leaf of a pytree.

    Leaves selected by `unstack(name)` are split along axis 0 into 'name@0', 'name@1', ...
    so that ExCP's per-tensor statistics and codebooks are per layer, as in the paper.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(_key_str(k) for k in path)
        x = np.asarray(jax.device_get(leaf), dtype=np.float32)
        parts = ({f"{name}@{i}": x[i] for i in range(x.shape[0])}
                 if unstack is not None and x.ndim >= 1 and unstack(name) else {name: x})
        for k, part in parts.items():
            if k in out:
                raise ValueError(f"two pytree leaves flatten to the same name {k!r}")
            out[k] = part
    return out


def flat_to_tree(template, flat: Mapping[str, np.ndarray]):
    """Pytree shaped like `template` (arrays or ShapeDtypeStructs) filled from `flat`.

    Undoes tree_to_flat, re-stacking 'name@i' entries. Leaves are host numpy arrays in the
    template's dtype; place them on devices with jax.device_put(tree, shardings).
    """
    def leaf(path, t):
        name = "/".join(_key_str(k) for k in path)
        if name in flat:
            x = np.asarray(flat[name])
        elif f"{name}@0" in flat and len(t.shape) >= 1:
            try:
                x = np.stack([flat[f"{name}@{i}"] for i in range(t.shape[0])])
            except KeyError as e:
                raise KeyError(f"missing layer slice {e} of {name!r}") from None
        else:
            raise KeyError(f"no tensor {name!r} to fill the template leaf")
        if tuple(x.shape) != tuple(t.shape):
            raise ValueError(f"{name!r}: shape {x.shape} does not match the template {t.shape}")
        return x.astype(t.dtype, copy=False)
    return jax.tree_util.tree_map_with_path(leaf, template)


def _is_adam(x) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def find_adam_state(opt_state) -> optax.ScaleByAdamState:
    """The single ScaleByAdamState inside an optax state (adam, adamw, chains of them)."""
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_adam) if _is_adam(x)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one optax.ScaleByAdamState in the optimizer state, "
                         f"found {len(found)}")
    return found[0]


def flatten_adam(params, opt_state, unstack: Callable[[str], bool] | None = scanned_layers
                 ) -> tuple[dict, dict, dict]:
    """(W, m, v) flat float32 dicts with identical names: params, Adam mu, Adam nu (raw).

    By default the scanned layer stacks are split per layer (see tree_to_flat).
    """
    adam = find_adam_state(opt_state)
    w, m, v = (tree_to_flat(t, unstack) for t in (params, adam.mu, adam.nu))
    if not (w.keys() == m.keys() == v.keys()):
        raise ValueError("Adam mu/nu do not mirror the params tree")
    return w, m, v


def unflatten_adam(opt_state_template, mu: Mapping, nu: Mapping):
    """`opt_state_template` with Adam mu/nu replaced from flat dicts; other leaves kept."""
    def swap(x):
        if not _is_adam(x):
            return x
        return x._replace(mu=flat_to_tree(x.mu, mu), nu=flat_to_tree(x.nu, nu))
    find_adam_state(opt_state_template)
    return jax.tree_util.tree_map(swap, opt_state_template, is_leaf=_is_adam)
