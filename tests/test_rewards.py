"""Reward terms (kyx/rewards): verifiers against hand-picked cases, the weighted sum, and
configuration errors."""
import numpy as np
import pytest

from kyx import rewards
from kyx.errors import ConfigError
from kyx.rewards import verifiers

PROMPT = 'def total(items, start=0):\n    """Sum the items."""'


@pytest.mark.parametrize("response,want", [
    ("    result = start\n    for x in items:\n        result += x\n    return result", 1.0),
    ("    for x in items:", 1.0),                       # a body prefix: an open block
    ("    return (items", 0.0),                         # unbalanced
    ("  x = 1\n    y = 2", 0.0),                        # inconsistent indentation
    ("", 0.0), ("   \n ", 0.0),                         # the docstring alone would parse
    ("    # Statistics", 0.0),                          # a comment is not a body (a hack
                                                        # PPO found against the first version)
])
def test_parses(response, want):
    assert verifiers.parses(PROMPT, response) == want


def test_uses_args_counts_parameters_read_by_the_body():
    assert verifiers.uses_args(PROMPT, "    return sum(items)") == 0.5
    assert verifiers.uses_args(PROMPT, "    return sum(items, start)") == 1.0
    assert verifiers.uses_args(PROMPT, "    return 0") == 0.0
    assert verifiers.uses_args(PROMPT, "    return (") == 0.0  # does not parse
    method = 'def size(self):\n    """Size."""'
    assert verifiers.uses_args(method, "    return 3") == 1.0  # no parameters but self


def test_no_repeats_and_length():
    assert verifiers.no_repeats(PROMPT, "    x = 1\n    x = 1\n    y = 2") == \
        pytest.approx(2 / 3)
    assert verifiers.no_repeats(PROMPT, "    x = 1\n    y = 2") == 1.0
    assert verifiers.length(PROMPT, "x" * 310, max_chars=300) == pytest.approx(-10 / 300)
    assert verifiers.length(PROMPT, "x" * 30, max_chars=300) == 0.0


def test_weighted_sum_and_parts():
    cfg = rewards.default_config()
    cfg.terms = "parses:2, no_repeats:0.5,length"
    cfg.max_chars = 10
    reward = rewards.build(cfg)
    responses = ["    return sum(items)", "    x = (", "    a = 1\n    a = 1"]
    total, parts = reward([PROMPT] * 3, responses)
    assert set(parts) == {"parses", "no_repeats", "length"}
    np.testing.assert_allclose(parts["parses"], [1, 0, 1])
    np.testing.assert_allclose(parts["no_repeats"], [1, 1, 0.5])
    want = 2 * parts["parses"] + 0.5 * parts["no_repeats"] + parts["length"]
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert total.dtype == np.float32


@pytest.mark.parametrize("terms,match", [
    ("parse", "did you mean parses"), ("parses:x", "bad weight"), ("", "empty"),
    ("rm", "model_workdir"), ("judge", "judge.source")])
def test_bad_reward_configs(terms, match):
    cfg = rewards.default_config()
    cfg.terms = terms
    with pytest.raises(ConfigError, match=match):
        rewards.build(cfg)
