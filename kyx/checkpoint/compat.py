"""Whether a run can resume from its workdir's checkpoints, said in the user's terms.

Resuming with a changed architecture (``--config.model.d_model=256`` on a d128 run)
makes Orbax fail on every step with shape errors, which used to be reported as "every
checkpoint is corrupted". Comparing the stored layout with the run's before restoring
turns that into one message naming the differing config keys, and nothing is touched.
"""
from __future__ import annotations

import jax

from kyx.checkpoint.digest import path_name
from kyx.errors import CheckpointError

SHOWN = 5  # differences listed in a message


def _flat(tree) -> dict:
    return {path_name(p): tuple(v.shape) for p, v in
            jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(v, "shape")}


def layout_differences(stored_tree, abstract_state) -> list[str]:
    """Arrays whose shape differs, or that only one side has ("path: checkpoint S, run S")."""
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


def check_resumable(where: str, stored_tree, abstract_state, stored_config: dict | None,
                    config: dict) -> None:
    """Raise CheckpointError when the checkpoint at ``where`` cannot hold this run's state."""
    layout = layout_differences(stored_tree, abstract_state)
    if not layout:
        return
    keys = config_differences(stored_config or {}, config)
    shown = keys or layout
    more = f" (and {len(shown) - SHOWN} more)" if len(shown) > SHOWN else ""
    what = ("the config differs from the one the checkpoints were written with: "
            if keys else "the checkpoints' arrays do not fit this run's model: ")
    raise CheckpointError(
        f"cannot resume from {where}: {what}{'; '.join(shown[:SHOWN])}{more}. Nothing was "
        "changed. Drop the override to resume this run, or train the changed model in a "
        "new --workdir")
