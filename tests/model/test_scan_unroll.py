"""model.scan_unroll: an unrolled layer scan gives the same logits and gradients as the
loop, with the same stacked parameters (checkpoints stay compatible)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.errors import ConfigError
from kyx.model import Decoder, ModelConfig

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=4, num_heads=4, num_kv_heads=2,
                  max_seq_len=16)


def logits_and_grads(cfg, params, tokens):
    model = Decoder(cfg)
    loss = lambda p: jnp.mean(model.apply({"params": p}, tokens)[0] ** 2)  # noqa: E731
    logits = model.apply({"params": params}, tokens)[0]
    return logits, jax.grad(loss)(params)


TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)


@pytest.fixture(scope="module")
def loop_run():
    """(params, logits and gradients of the layer loop), computed once for every case."""
    params = Decoder(CFG).init(jax.random.key(0), TOKENS)["params"]
    return params, jax.jit(lambda p: logits_and_grads(CFG, p, TOKENS))(params)


# 2: two layers per scan step; 9 > num_layers: clamped to a full unroll
@pytest.mark.parametrize("unroll", [2, 9])
def test_unrolled_equals_loop(unroll, loop_run):
    params, want = loop_run
    unrolled = dataclasses.replace(CFG, scan_unroll=unroll)
    assert jax.tree.structure(Decoder(unrolled).init(jax.random.key(0), TOKENS)["params"]) \
        == jax.tree.structure(params)
    got = jax.jit(lambda p: logits_and_grads(unrolled, p, TOKENS))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_invalid_unroll_is_a_config_error():
    with pytest.raises(ConfigError, match="scan_unroll"):
        dataclasses.replace(CFG, scan_unroll=0).validate()
