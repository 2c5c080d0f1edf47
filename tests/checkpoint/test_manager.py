"""Reading one model's params from a checkpoint: the several-models layout (default model
`policy`, else the only one), named models, and the single-model layout of earlier kyx."""
import jax
import numpy as np
import pytest

from kyx import sharding
from kyx.checkpoint.manager import Checkpointer
from kyx.checkpoint.workdir import load_params
from kyx.errors import CheckpointError
from kyx.model import Decoder, ModelConfig
from kyx.model.params import init_params

CFG = ModelConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                  ffn_dim=32)


def _save(directory, state):
    ckpt = Checkpointer(str(directory), async_save=False)
    ckpt.save(1, state, {}, {}, force=True)
    ckpt.close()


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_params_from_every_layout(tmp_path):
    mesh, rules = sharding.single_device_mesh(), sharding.get_rules("dp")
    model = Decoder(CFG)
    p1, p2 = (init_params(model, jax.random.key(i), mesh, rules) for i in (1, 2))
    rng = np.zeros(2, np.uint32)
    _save(tmp_path / "two" / "checkpoints", {"step": np.int32(1), "rng": rng, "models": {
        "policy": {"params": p1, "opt_state": None}, "ref": {"params": p2, "opt_state": None}}})
    _save(tmp_path / "one" / "checkpoints", {"step": np.int32(1), "rng": rng, "models": {
        "reward": {"params": p2, "opt_state": None}}})
    _save(tmp_path / "legacy" / "checkpoints",
          {"step": np.int32(1), "rng": rng, "params": p1, "opt_state": {"count": np.int32(3)}})

    load = lambda d, name=None: load_params(str(tmp_path / d), model, mesh, rules,  # noqa: E731
                                            name=name)
    assert _equal(load("two"), p1) and _equal(load("two", "ref"), p2)
    assert _equal(load("one"), p2)          # the only model
    assert _equal(load("legacy"), p1)       # earlier single-model layout = policy
    with pytest.raises(CheckpointError, match="has no model 'value'.*'policy', 'ref'"):
        load("two", "value")
    assert Checkpointer(str(tmp_path / "two" / "checkpoints"),
                        read_only=True).model_names(1) == ["policy", "ref"]


def test_params_read_in_their_stored_dtype_and_cast_to_the_model(tmp_path):
    """A checkpoint's params come back bit for bit in the dtype they were saved in (their
    digests verify), then in the reading model's ``param_dtype``: bf16 weights for a
    float32 model, float32 weights for a bf16 model (init_from across policies)."""
    import dataclasses

    import jax.numpy as jnp

    mesh, rules = sharding.single_device_mesh(), sharding.get_rules("dp")
    f32, bf16 = Decoder(CFG), Decoder(dataclasses.replace(CFG, param_dtype="bfloat16"))
    p32 = init_params(f32, jax.random.key(1), mesh, rules)
    p16 = init_params(bf16, jax.random.key(1), mesh, rules)
    assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype(jnp.bfloat16)}
    rng = np.zeros(2, np.uint32)
    for name, params in (("f32", p32), ("bf16", p16)):
        _save(tmp_path / name / "checkpoints", {"step": np.int32(1), "rng": rng, "models": {
            "policy": {"params": params, "opt_state": None}}})
    load = lambda d, model: load_params(str(tmp_path / d), model, mesh, rules)  # noqa: E731
    cast = lambda t, d: jax.tree.map(lambda x: x.astype(d), t)  # noqa: E731
    for d, model, want in (("bf16", bf16, p16), ("f32", f32, p32),
                           ("bf16", f32, cast(p16, jnp.float32)),
                           ("f32", bf16, cast(p32, jnp.bfloat16))):
        got = load(d, model)
        assert _equal(got, want) and all(x.dtype == y.dtype for x, y in
                                         zip(jax.tree.leaves(got), jax.tree.leaves(want)))
