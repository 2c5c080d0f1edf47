"""Device mesh, logical-axis rule presets, sharding constraints and the replication check.

Parameters and activations carry *logical* axis names; a rule preset maps them to the
mesh axes ``data``, ``fsdp``, ``tensor`` and ``expert``. Switching parallelism strategy
is switching preset. Parameter names (``embed``, ``mlp``, ``heads`` ...) and activation
names (``act_batch``, ``act_embed`` ...) are kept apart so that, under FSDP, a weight
can be sharded over ``fsdp`` along ``embed`` while activations are sharded over ``fsdp``
along the batch.

Mapping drops a mesh axis when the mesh lacks it, when it has size 1, or when it does not
divide the array dimension; so the same model code runs on 1 device, on 8 simulated CPU
devices and on a pod, and constraints become no-ops where they cannot apply.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kyx import axes as ax
from kyx.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")  # mesh axes that split the global batch

Rules = tuple[tuple[str, Any], ...]

_ACTIVATIONS_DP: Rules = (
    (ax.ACT_BATCH, BATCH_AXES),
    (ax.ACT_LENGTH, None),
    (ax.ACT_EMBED, None),
    (ax.ACT_HEADS, None),
    (ax.ACT_KV_HEADS, None),
    (ax.ACT_MLP, None),
    (ax.ACT_VOCAB, None),
    (ax.ACT_EXP, None),
    (ax.ACT_EXP_BATCH, BATCH_AXES),
    (ax.ACT_LATENTS, None),
)
_ACTIVATIONS_TP: Rules = (
    (ax.ACT_BATCH, BATCH_AXES),
    (ax.ACT_LENGTH, None),
    (ax.ACT_EMBED, None),
    (ax.ACT_HEADS, "tensor"),
    (ax.ACT_KV_HEADS, "tensor"),
    (ax.ACT_MLP, "tensor"),
    (ax.ACT_VOCAB, "tensor"),
    (ax.ACT_EXP, None),
    (ax.ACT_EXP_BATCH, BATCH_AXES),
    (ax.ACT_LATENTS, "tensor"),
)
# Expert parallelism: the expert dimension of MoE weights and of dispatched tokens lives on
# `expert`; dispatched tokens keep their remaining batch split over data x fsdp. Ordinary
# activations are still split over all batch axes, so the dispatch is an all-to-all.
_ACTIVATIONS_EP: Rules = tuple(
    (k, v) for k, v in _ACTIVATIONS_DP if k not in (ax.ACT_EXP, ax.ACT_EXP_BATCH)) + (
    (ax.ACT_EXP, "expert"),
    (ax.ACT_EXP_BATCH, ("data", "fsdp")),
)


def _params(**mesh_axes) -> Rules:
    """Parameter rules: every logical parameter axis replicated unless given a mesh axis."""
    return tuple((name, mesh_axes.get(name)) for name in ax.PARAM_AXES)


RULE_PRESETS: dict[str, Rules] = {
    # Pure data parallelism: every parameter replicated, batch split over all batch axes.
    "dp": _ACTIVATIONS_DP + _params(),
    # ZeRO-3 style: parameters and optimizer state sharded over `fsdp` along `embed`.
    "fsdp": _ACTIVATIONS_DP + _params(embed="fsdp", latents="fsdp"),
    # FSDP over `fsdp` plus Megatron tensor parallelism over `tensor`.
    "fsdp_tp": _ACTIVATIONS_TP + _params(vocab="tensor", embed="fsdp", mlp="tensor",
                                         heads="tensor", kv_heads="tensor",
                                         latents=("fsdp", "tensor")),
    # Expert parallelism combined with FSDP: MoE expert weights split over `expert` along
    # `exp` (and over `fsdp` along `embed`); everything else as in `fsdp`. With fsdp=1
    # this is plain expert + data parallelism.
    "ep": _ACTIVATIONS_EP + _params(embed="fsdp", exp="expert", latents="fsdp"),
}


def get_rules(preset: str | Rules) -> Rules:
    """Return the rule tuple for a preset name (or pass explicit rules through)."""
    if not isinstance(preset, str):
        return tuple(preset)
    if preset not in RULE_PRESETS:
        raise ConfigError(
            f"unknown sharding rule preset {preset!r}; choose one of {sorted(RULE_PRESETS)}")
    return RULE_PRESETS[preset]


def register_rules(name: str, rules: Rules) -> None:
    """Add a preset under a new name (e.g. an experiment's own rules)."""
    RULE_PRESETS[name] = tuple(rules)


# ----------------------------------------------------------------------------- mesh

def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolve axis sizes (one may be -1) so that they multiply to ``num_devices``."""
    sizes = {a: int(axis_sizes.get(a, 1)) for a in MESH_AXES}
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"unknown mesh axes {sorted(unknown)}; valid axes are {MESH_AXES}")
    inferred = [a for a, s in sizes.items() if s == -1]
    if len(inferred) > 1:
        raise ConfigError(f"at most one mesh axis may be -1, got {inferred}")
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise ConfigError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if inferred:
        if num_devices % known:
            raise ConfigError(
                f"cannot infer mesh axis {inferred[0]!r}: the other axes multiply to {known}, "
                f"which does not divide the {num_devices} available devices")
        sizes[inferred[0]] = num_devices // known
    elif known != num_devices:
        raise ConfigError(
            f"mesh axes {sizes} multiply to {known} but {num_devices} devices are available; "
            f"set one axis to -1 to infer it (e.g. --config.mesh.data=-1)")
    return sizes


def make_mesh(axis_sizes: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """Build a Mesh with axes (data, fsdp, tensor, expert); default: all devices on data."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(axis_sizes if axis_sizes is not None else {"data": -1}, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        from jax.experimental import mesh_utils
        dev_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU topologies / simulated devices: plain reshape is fine
        dev_array = np.asarray(devices).reshape(shape)
    return Mesh(dev_array, MESH_AXES)


def mesh_from_config(mesh_cfg) -> tuple[Mesh, Rules]:
    """(mesh, rules) from a config's ``mesh`` section: axis sizes and the rule preset."""
    mesh = make_mesh({a: mesh_cfg[a] for a in MESH_AXES if a in mesh_cfg})
    return mesh, get_rules(mesh_cfg["rules"])


def single_device_mesh() -> Mesh:
    """A 1-device mesh (inspection, conversion, notebooks): every rule maps to no axis."""
    return make_mesh({"data": 1}, devices=jax.devices()[:1])


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
    """Number of shards the batch dimension is split into under these rules."""
    spec = logical_to_spec(ax.B, mesh, rules, shape=None)
    axes = spec[0] if spec else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def check_batch(global_batch: int, mesh: Mesh, rules: Rules) -> None:
    """Fail clearly when the global batch does not divide across the batch mesh axes."""
    div = batch_divisor(mesh, rules)
    if global_batch % div:
        axes = {a: mesh.shape[a] for a in BATCH_AXES if a in mesh.shape}
        raise ConfigError(
            f"global batch size {global_batch} is not divisible by the {div} batch shards "
            f"of the mesh {axes}; use a batch size that is a multiple of {div} or shrink "
            f"the data/fsdp/expert mesh axes")


# ----------------------------------------------------------------------------- rules

def _lookup(rules: Rules, name: str | None):
    if name is None:
        return None
    for key, value in rules:
        if key == name:
            return value
    raise ConfigError(f"logical axis {name!r} has no sharding rule; known: {[k for k, _ in rules]}")


def logical_to_spec(names: Sequence[str | None], mesh: Mesh, rules: Rules,
                    shape: Sequence[int] | None) -> P:
    """Map logical axis names to a PartitionSpec valid for ``mesh`` (and ``shape``).

    Mesh axes that are absent, of size 1, already used by an earlier dimension, or that
    do not divide the dimension are dropped, so the result is always a legal sharding.
    """
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        target = _lookup(rules, name)
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        size = 1
        for mesh_axis in axes:
            if mesh_axis not in mesh.shape or mesh.shape[mesh_axis] == 1 or mesh_axis in used:
                continue
            if shape is not None and shape[i] % (size * mesh.shape[mesh_axis]):
                continue
            kept.append(mesh_axis)
            size *= mesh.shape[mesh_axis]
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*out)


def named_sharding(names, mesh: Mesh, rules: Rules, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, mesh, rules, shape))


def tree_shardings(logical_specs, abstract_tree, mesh: Mesh, rules: Rules):
    """NamedShardings for a pytree given its logical PartitionSpecs and abstract arrays."""
    def one(spec, leaf):
        names = tuple(spec) if spec is not None else (None,) * len(leaf.shape)
        names = names + (None,) * (len(leaf.shape) - len(names))
        return named_sharding(names, mesh, rules, leaf.shape)
    return jax.tree.map(one, logical_specs, abstract_tree,
                        is_leaf=lambda x: isinstance(x, P) or x is None)


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs carrying shardings, as targets for restoring checkpoints."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


# ----------------------------------------------------------------------------- context

_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("kyx_sharding", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: str | Rules):
    """Activate (mesh, rules) for `constrain` calls traced inside this block."""
    token = _CONTEXT.set((mesh, get_rules(rules)))
    try:
        yield mesh
    finally:
        _CONTEXT.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `use_mesh` or on 1 device."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    if mesh.size == 1:
        return x
    spec = logical_to_spec(names, mesh, rules, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# ----------------------------------------------------------------------------- checks

def replication_report(shardings, abstract_tree, min_size: int = 2 ** 14):
    """Bytes of parameters left fully replicated, and the largest such tensors.

    Tensors with fewer than ``min_size`` elements (norm scales, biases) are excepted.
    Returns (replicated_fraction, total_bytes, [(path, bytes, shape), ...] largest first).
    """
    total = 0
    offenders = []
    leaves = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sh in zip(leaves, shard_leaves):
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        total += nbytes
        if np.prod(leaf.shape) < min_size:
            continue
        if sh.is_fully_replicated:
            offenders.append((jax.tree_util.keystr(path), nbytes, tuple(leaf.shape)))
    offenders.sort(key=lambda o: -o[1])
    frac = sum(o[1] for o in offenders) / max(total, 1)
    return frac, total, offenders


def check_replication(shardings, abstract_tree, mesh: Mesh, preset: str,
                      max_fraction: float = 0.02) -> float:
    """Fail when more than ``max_fraction`` of parameter bytes stay replicated.

    Applies to fsdp-style presets on multi-device meshes; returns the measured fraction.
    """
    frac, total, offenders = replication_report(shardings, abstract_tree)
    if (mesh.size > 1 and ("fsdp" in preset or preset == "ep") and mesh.shape.get("fsdp", 1) > 1
            and frac > max_fraction):
        top = "\n".join(f"  {p}: {b / 2**20:.2f} MiB {s}" for p, b, s in offenders[:5])
        raise ConfigError(
            f"{frac:.1%} of {total / 2**20:.1f} MiB parameter bytes are replicated under "
            f"preset {preset!r} on mesh {dict(mesh.shape)} (limit {max_fraction:.0%}); "
            f"largest replicated tensors:\n{top}\nAdjust the rules or make the dimensions "
            f"divisible by the fsdp axis size.")
    return frac
