"""Whether a run can resume from its workdir's checkpoints, said in the user's terms.

Resuming with a changed architecture (``--config.model.d_model=256`` on a d128 run)
makes Orbax fail on every step with shape errors, which used to be reported as "every
checkpoint is corrupted". Comparing the stored layout (shapes and dtypes: a changed
``model.param_dtype`` or ``optim.state_dtype`` would be read cast, and fail its digest
check) with the run's before restoring turns that into one message naming the differing
config keys, and nothing is touched.
"""
from __future__ import annotations

import jax
import numpy as np

from kyx.checkpoint.digest import path_name
from kyx.errors import CheckpointError

SHOWN = 5  # differences listed in a message


def _layout(v) -> str:
    """``(2, 32) bfloat16``; the dtype is left out where the metadata has none."""
    dtype = getattr(v, "dtype", None)
    return f"{tuple(v.shape)}" + (f" {np.dtype(dtype).name}" if dtype is not None else "")


def _flat(tree) -> dict:
    return {path_name(p): _layout(v) for p, v in
            jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(v, "shape")}


def layout_differences(stored_tree, abstract_state) -> list[str]:
    """Arrays whose shape or dtype differs, or that only one side has ("path: checkpoint
    S D, this run S D")."""
    stored, wanted = _flat(stored_tree), _flat(abstract_state)
    out = [f"{n}: checkpoint {stored[n]}, this run {wanted[n]}"
           for n in wanted if n in stored and stored[n] != wanted[n]]
    out += [f"{n}: only in this run" for n in wanted if n not in stored]
    out += [f"{n}: only in the checkpoint" for n in stored if n not in wanted]
    return out


def _flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: dict, current: dict, sections=("model",)) -> list[str]:
    """``key: stored -> current`` for the keys of ``sections`` that differ (tuples and
    lists compare equal, as JSON stores both as lists)."""
    def norm(v):
        return list(v) if isinstance(v, tuple) else v
    a = _flat_config({s: stored.get(s, {}) for s in sections})
    b = _flat_config({s: current.get(s, {}) for s in sections})
    return [f"{k}: {a.get(k, '<unset>')!r} in the checkpoint, {b.get(k, '<unset>')!r} now"
            for k in sorted(set(a) | set(b)) if norm(a.get(k)) != norm(b.get(k))]


# config keys that fix the state's layout: the model's, and the optimizers' moment dtypes
LAYOUT_KEYS = ("model.", "optim.state_dtype:", "value_optim.state_dtype:")


def check_resumable(where: str, stored_tree, abstract_state, stored_config: dict | None,
                    config: dict) -> None:
    """Raise CheckpointError when the checkpoint at ``where`` cannot hold this run's state."""
    layout = layout_differences(stored_tree, abstract_state)
    if not layout:
        return
    keys = [d for d in config_differences(stored_config or {}, config,
                                          ("model", "optim", "value_optim"))
            if d.startswith(LAYOUT_KEYS)]
    shown = keys or layout
    more = f" (and {len(shown) - SHOWN} more)" if len(shown) > SHOWN else ""
    what = ("the config differs from the one the checkpoints were written with: "
            if keys else "the checkpoints' arrays do not fit this run's model: ")
    raise CheckpointError(
        f"cannot resume from {where}: {what}{'; '.join(shown[:SHOWN])}{more}. Nothing was "
        "changed. Drop the override to resume this run, or train the changed model in a "
        "new --workdir")
