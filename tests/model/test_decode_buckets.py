"""Bucketed generation shapes: any prompts compile one program per prompt-length bucket."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kyx.model import Decoder, ModelConfig
from kyx.model.decode import generate, generate_batches, generate_padded, length_bucket, pad_prompts


def _model():
    # a vocabulary no other test uses, so this model's programs are compiled here
    cfg = ModelConfig(vocab_size=72, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1)
    model = Decoder(cfg)
    params = nn.unbox(model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"])
    return model, params


@pytest.mark.parametrize("n, bucket", [(1, 16), (16, 16), (17, 32), (64, 64), (65, 128),
                                       (200, 256)])
def test_length_bucket_is_next_power_of_two_from_16(n, bucket):
    assert length_bucket(n) == bucket


def test_pad_rows_are_inactive_and_filled():
    tokens, lengths, active = pad_prompts([[5, 6, 7], [8]], pad_id=0, rows=4)
    assert tokens.shape == (4, 16) and lengths.tolist() == [3, 1, 1, 1]
    assert active.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="do not fit"):
        pad_prompts([[1]] * 5, rows=4)


@pytest.mark.slow  # compiles three decode programs: that count is what it checks
def test_compilations_bounded_by_length_buckets():
    """9 calls with 1..4 prompts of 1..64 tokens, batch size 4: one compilation per
    bucket (16, 32, 64), where exact widths x row counts would compile 9."""
    model, params = _model()
    rng = np.random.default_rng(0)
    before = generate_padded._cache_size()
    buckets = set()
    for n_prompts, longest in zip([1, 2, 3, 4, 1, 2, 3, 4, 2], [3, 20, 40, 64, 9, 33, 17, 50, 12]):
        prompts = [rng.integers(1, 72, rng.integers(1, longest + 1)).tolist()
                   for _ in range(n_prompts - 1)] + [rng.integers(1, 72, longest).tolist()]
        buckets.add(length_bucket(longest))
        out = generate(model, params, prompts, jax.random.key(0), max_new_tokens=2,
                       temperature=0.0, batch_size=4)
        assert len(out) == n_prompts and all(len(o) == 2 for o in out)
    assert buckets == {16, 32, 64}
    assert generate_padded._cache_size() - before == len(buckets)


def test_batches_resume_at_any_batch():
    """``generate_batches`` from batch k yields what the uninterrupted run yields from k
    (each batch has its own key), and batches of one run differ (not one key reused)."""
    model, params = _model()
    prompts = [[1, 2, 3]] * 7
    opts = dict(batch_size=3, max_new_tokens=6, temperature=1.0)
    full = list(generate_batches(model, params, prompts, jax.random.key(3), **opts))
    assert [len(b) for b in full] == [3, 3, 1]
    assert full[0] != full[1]
    assert list(generate_batches(model, params, prompts, jax.random.key(3), start_batch=1,
                                 **opts)) == full[1:]
