"""optim.schedule_steps: a run can stop early on a longer run's learning-rate schedule."""
import math

import pytest

from kyx.errors import ConfigError
from kyx.train import optim


def _cfg(**kw):
    cfg = optim.default_config()
    cfg.update(dict(lr=1.0, min_lr_ratio=0.1, warmup_steps=10) | kw)
    return cfg


def test_cosine_by_hand_and_schedule_steps_replaces_the_run_length():
    own = optim.make_schedule(_cfg(), 110)
    # after warmup: end + (lr - end) * (1 + cos(pi * (t - w) / (T - w))) / 2
    assert float(own(60)) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2)
    assert float(own(110)) == pytest.approx(0.1)
    # a 30-step continuation on the 110-step schedule sees the same rates as the long run
    short = optim.make_schedule(_cfg(schedule_steps=110), 30)
    for t in (0, 5, 10, 29, 60, 110):
        assert float(short(t)) == float(own(t))
    assert float(optim.make_schedule(_cfg(), 30)(29)) < float(own(29))


def test_negative_schedule_steps_is_a_config_error():
    with pytest.raises(ConfigError, match="schedule_steps"):
        optim.make_schedule(_cfg(schedule_steps=-1), 30)
