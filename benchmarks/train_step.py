"""Shared by memory.py and accelerator.py: a config's real training step on a device mesh.

``setup(spec, overrides, mesh, rules)`` loads and validates the config as `kyx train` does
(overrides, then ``--mesh`` axis sizes and the ``--rules`` preset), builds the trainer's
step without data (``build_step``), the mesh, the TrainState's shardings and abstract
shapes, and jits the step exactly as the training loop does (kyx/train/loop.py
``jit_step``: state and batch shardings in, state out, state donated). ``abstract_args``
gives ShapeDtypeStructs carrying those shardings, so the step lowers and compiles without
allocating the model; ``per_device_bytes`` sizes a sharded abstract tree on one device.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from kyx import config as config_lib
from kyx import sharding
from kyx.errors import ConfigError
from kyx.model import ModelConfig
from kyx.train import loop, registry
from kyx.train import state as state_lib

# the batch of the pretraining trainer (configs/pretrain.py, configs/moe.py): the keys of
# kyx/train/pretrain.py BATCH_AXES; int32 except the float mask (kyx/data/pipeline.py)
BATCH_DTYPES = {"tokens": jnp.int32, "targets": jnp.int32, "segment_ids": jnp.int32,
                "positions": jnp.int32, "loss_mask": jnp.float32}

MEMORY_FIELDS = ("argument", "output", "alias", "temp", "generated_code")


@dataclasses.dataclass
class StepSetup:
    """A config's training step on a mesh, and what lowering or running it needs."""
    cfg: object
    model: ModelConfig
    mesh: jax.sharding.Mesh
    rules: tuple
    shardings: state_lib.TrainState        # NamedSharding per leaf of the TrainState
    abstract: state_lib.TrainState         # ShapeDtypeStruct per leaf
    batch_shardings: dict
    fn: object                             # the jitted step, as kyx/train/loop.py jits it
    models: dict                           # {name: ModelSpec}
    stats: dict                            # initial TrainState.stats

    @property
    def mesh_shape(self) -> dict:
        return {a: int(s) for a, s in self.mesh.shape.items()}

    @property
    def batch_shape(self) -> tuple[int, int]:
        return self.cfg.data.batch_size, self.cfg.data.seq_len


def mesh_overrides(mesh: str | dict | None) -> list[str]:
    """``data=2,fsdp=4`` (or a dict) -> config overrides of every mesh axis: the axes named
    get their sizes (one may be -1), the others 1, so the preset's sizes do not mix in."""
    if not mesh:
        return []
    if isinstance(mesh, str):
        sizes = {}
        for item in mesh.split(","):
            axis, eq, size = item.partition("=")
            if not eq or not size.strip().lstrip("-").isdigit():
                raise ConfigError(f"--mesh wants axis=size pairs such as data=2,fsdp=4; got "
                                  f"{item!r} in {mesh!r}")
            sizes[axis.strip()] = int(size)
        mesh = sizes
    unknown = set(mesh) - set(sharding.MESH_AXES)
    if unknown:
        raise ConfigError(f"unknown mesh axes {sorted(unknown)} in --mesh; valid axes are "
                          f"{sharding.MESH_AXES}")
    return [f"mesh.{a}={int(mesh.get(a, 1))}" for a in sharding.MESH_AXES]


def fit_mesh(sizes: dict, num_devices: int) -> dict:
    """A config's mesh axis sizes fitted to ``num_devices``: each fixed axis keeps the
    greatest common divisor of its size and the devices still unassigned (expert=8 on 4
    GPUs -> 4, on 1 -> 1), and the devices left over go to the axis set to -1 (fsdp when
    none is)."""
    out, left = {}, num_devices
    free = next((a for a in sharding.MESH_AXES if int(sizes.get(a, 1)) == -1), "fsdp")
    for axis in sharding.MESH_AXES:
        size = int(sizes.get(axis, 1))
        out[axis] = 1 if axis == free else math.gcd(max(size, 1), left)
        left //= out[axis]
    out[free] *= left
    return out


def load_config(spec: str, overrides=(), mesh=None, rules: str | None = None):
    """The validated config: ``spec`` with ``overrides`` ('a.b=v', any field, so new config
    fields work as soon as they exist), then the mesh axes and rule preset."""
    extra = mesh_overrides(mesh) + ([f"mesh.rules={rules}"] if rules else [])
    cfg = config_lib.load(spec, [*overrides, *extra])
    if cfg.trainer != "pretrain":
        raise ConfigError(f"{spec} has trainer {cfg.trainer!r}; these benchmarks build the "
                          "pretraining step (configs/pretrain.py, configs/moe.py)")
    registry.resolve(cfg)   # adopt init_from's architecture, validate every field
    return cfg


def setup(spec: str, overrides=(), mesh=None, rules: str | None = None, devices=None
          ) -> StepSetup:
    """The config's training step on a mesh of ``devices`` (default: all of JAX's)."""
    from kyx.train import pretrain

    cfg = load_config(spec, overrides, mesh, rules)
    step = registry.build_step(cfg)
    mesh_ = sharding.make_mesh({a: cfg.mesh[a] for a in sharding.MESH_AXES}, devices)
    rules_ = sharding.get_rules(cfg.mesh.rules)
    sharding.check_batch(cfg.data.batch_size, mesh_, rules_)
    shardings, abstract = state_lib.state_shardings(step.models, mesh_, rules_, step.stats)
    batch_sh = loop.batch_shardings(pretrain.BATCH_AXES, mesh_, rules_)
    return StepSetup(cfg=cfg, model=ModelConfig.from_config(cfg.model), mesh=mesh_,
                     rules=rules_, shardings=shardings, abstract=abstract,
                     batch_shardings=batch_sh,
                     fn=loop.jit_step(step.fn, shardings, batch_sh), models=step.models,
                     stats=step.stats)


def abstract_args(s: StepSetup) -> tuple:
    """(state, batch, rng) of the step as sharded ShapeDtypeStructs: nothing allocated."""
    b, t = s.batch_shape
    batch = {k: jax.ShapeDtypeStruct((b, t), BATCH_DTYPES[k], sharding=sh)
             for k, sh in s.batch_shardings.items()}
    rng = jax.eval_shape(lambda: jax.random.key(0))
    return sharding.with_shardings(s.abstract, s.shardings), batch, rng


def per_device_bytes(abstract_tree, shardings_tree) -> int:
    """Bytes one device holds of a sharded tree: each leaf's shard shape x its item size
    (the largest shard where a dimension does not divide evenly)."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings_tree)):
        total += math.prod(sh.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return int(total)


def total_bytes(abstract_tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(abstract_tree)))


def state_bytes(s: StepSetup) -> dict:
    """Per-device bytes of the trained models' params and optimizer state (and the whole
    params once), from the sharded abstract state."""
    out = {"params_bytes_total": 0, "params_bytes_per_device": 0,
           "opt_state_bytes_per_device": 0}
    for name, m in s.abstract.models.items():
        sh = s.shardings.models[name]
        out["params_bytes_total"] += total_bytes(m.params)
        out["params_bytes_per_device"] += per_device_bytes(m.params, sh.params)
        if m.opt_state is not None:
            out["opt_state_bytes_per_device"] += per_device_bytes(m.opt_state, sh.opt_state)
    return out


def state_dtypes(s: StepSetup) -> dict:
    """The dtypes of the trained models' params and of their optimizer states' arrays."""
    def kinds(trees):
        return sorted({str(x.dtype) for t in trees for x in jax.tree.leaves(t) if x.ndim})
    models = s.abstract.models.values()
    return {"param_dtypes": kinds(m.params for m in models),
            "opt_state_dtypes": kinds(m.opt_state for m in models if m.opt_state is not None)}


def param_count(s: StepSetup) -> int:
    return int(sum(math.prod(x.shape) for m in s.abstract.models.values()
                   for x in jax.tree.leaves(m.params)))


def compiled_memory(compiled) -> dict:
    """Per-device bytes of a compiled program (``memory_analysis()``) and ``total_bytes`` =
    argument + output - alias (outputs written into donated arguments) + temporaries +
    generated code: what the program needs on one device at its peak."""
    stats = compiled.memory_analysis()
    row = {f"{k}_bytes": int(getattr(stats, f"{k}_size_in_bytes")) for k in MEMORY_FIELDS}
    row["total_bytes"] = (row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
                          + row["temp_bytes"] + row["generated_code_bytes"])
    return row
