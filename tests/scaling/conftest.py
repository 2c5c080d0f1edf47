"""A synthetic run whose evaluations follow the temporal scaling law exactly (plus noise)."""
import json
import types

import numpy as np
import pytest

from kyx.scaling import position_law, temporal

SCHEDULE = temporal.Schedule(n_sep=50, n_total=1000)
TRUE = {"a0": ("log", np.array([3.0, -0.25])),                # 1.27 -> 1.27 .. 1.66 at N=60
        "a1": ("hyperbolic", np.array([-0.06, np.log(0.004), 0.1])),
        "a2": ("cosine", np.array([3.2, 0.8]))}               # 4.0 after warmup -> 2.4 at the end
EVAL_STEPS = np.arange(10, 1001, 10)


def true_params(steps):
    steps = np.asarray(steps, np.float64)
    return np.stack([temporal.FAMILIES.get(f).fn(c, steps, SCHEDULE)
                     for f, c in TRUE.values()], axis=1)


def synthetic_records(noise=0.005, positions=64, seed=0):
    """eval_stats.jsonl records of the synthetic run (doc starts + continuations)."""
    rng = np.random.default_rng(seed)
    count_p = np.linspace(300, 200, positions).round()
    records = []
    for step, a in zip(EVAL_STEPS, true_params(EVAL_STEPS)):
        loss_p = position_law.hyperbola(a, position_law.positions(positions))
        loss_p = loss_p + rng.normal(0, noise, positions)
        doc = np.round(count_p / 3)
        records.append({"step": int(step),
                        "per_position_loss_sum": (loss_p * doc).tolist(),
                        "per_position_count": doc.tolist(),
                        "continued_loss_sum": (loss_p * (count_p - doc)).tolist(),
                        "continued_count": (count_p - doc).tolist()})
    return records, count_p


def true_loss(step, count_p):
    return position_law.weighted_loss(true_params([step])[0], count_p)


@pytest.fixture
def law():
    """The synthetic run's schedule, true families and generators."""
    return types.SimpleNamespace(SCHEDULE=SCHEDULE, TRUE=TRUE, records=synthetic_records,
                                 families={k: f for k, (f, _) in TRUE.items()},
                                 true_loss=true_loss, true_params=true_params)


@pytest.fixture
def synthetic_workdir(tmp_path):
    """A workdir with config.json (warmup 50, 1000 steps) and the synthetic eval_stats."""
    from kyx import config as config_lib
    from kyx.train import pretrain

    cfg = pretrain.default_config()
    cfg.optim.warmup_steps, cfg.train.steps = SCHEDULE.n_sep, SCHEDULE.n_total
    config_lib.dump(cfg, str(tmp_path / "config.json"))
    records, count_p = synthetic_records()
    (tmp_path / "eval_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path, count_p
