"""The prediction protocol on a run that follows the law: recovery and extrapolation."""
import json

import numpy as np
import pytest

from kyx.cli import main as cli_main
from kyx.errors import DataError
from kyx.scaling import curve_from_records, forecast, load_curve, relative_error


@pytest.mark.parametrize("fraction,noise", [(0.2, 0.001), (0.4, 0.005)])
def test_forecast_recovers_the_final_loss(fraction, noise, law):
    """Within 1% of the true final loss from the first 20% (per-position noise 0.001 nats)
    or 40% (0.005 nats) of the run: extrapolating the cosine piece from 20% amplifies
    noise ~5x more than from 40% (3% error at 0.005 from 20%)."""
    records, count_p = law.records(noise=noise)
    curve = curve_from_records(records)
    fc = forecast(curve, law.SCHEDULE, until_step=int(fraction * law.SCHEDULE.n_total),
                  families=law.families, baselines=())
    assert fc.fit_steps[0] == 60 and fc.fit_steps[-1] == int(fraction * law.SCHEDULE.n_total)
    final = law.true_loss(law.SCHEDULE.n_total, count_p)
    assert relative_error(fc.predictions()["temporal"], final) < 0.01
    # the parameter trajectories themselves are recovered where they were fitted
    np.testing.assert_allclose(fc.params_at(fc.fit_steps), law.true_params(fc.fit_steps),
                               rtol=0.05)
    assert [fc.temporal_fits[k].family for k in ("a0", "a1", "a2")] == \
        [f for f, _ in law.TRUE.values()]


def test_noise_free_forecast_is_nearly_exact(law):
    records, count_p = law.records(noise=0.0)
    fc = forecast(curve_from_records(records), law.SCHEDULE, until_step=400,
                  families=law.families, baselines=())
    for step in (500, 800, 1000):
        assert fc.loss_at(step)[0] == pytest.approx(law.true_loss(step, count_p), rel=1e-4)


def test_power_law_baselines_cannot_see_the_cosine_tail(law):
    """The aggregate power laws fitted on the early curve miss the schedule-driven drop
    that the temporal law's cosine family carries (the paper's argument)."""
    records, count_p = law.records()
    fc = forecast(curve_from_records(records), law.SCHEDULE, until_step=400,
                  families=law.families, baselines=("kaplan",))
    final = law.true_loss(law.SCHEDULE.n_total, count_p)
    preds = fc.predictions()
    assert relative_error(preds["temporal"], final) < relative_error(preds["kaplan"], final)


def test_curve_keeps_last_record_per_step_and_sources(law):
    records, _ = law.records()
    redo = dict(records[3], per_position_loss_sum=[0.0] * 64)
    other = dict(records[0], source="web")
    curve = curve_from_records(records + [redo, other])
    assert len(curve.steps) == len(records)
    assert curve.sum_ep[3, 0] == pytest.approx(records[3]["continued_loss_sum"][0])
    assert list(curve_from_records(records + [other], source="web").steps) == [10]
    with pytest.raises(DataError, match="sources present: web"):
        curve_from_records(records + [other], source="code")
    document = curve_from_records(records, kind="document")
    assert document.count_ep.sum() < curve.count_ep.sum()


def test_too_few_evaluations_is_a_clear_error(law):
    records, _ = law.records()
    with pytest.raises(DataError, match="at least 4"):
        forecast(curve_from_records(records), law.SCHEDULE, until_step=80)


def test_cli_fit_on_running_workdir(synthetic_workdir, law, capsys):
    workdir, count_p = synthetic_workdir
    with open(workdir / "eval_stats.jsonl", "a") as f:
        f.write('{"step": 1010, "per_position_lo')   # a writer killed mid-line
    assert load_curve(workdir).steps[-1] == 1000
    assert cli_main(["scaling", "fit", "--workdir", str(workdir), "--until-step", "400",
                     "--at-step", "700", "--json", "--a1", "hyperbolic", "--a2", "cosine"]) == 0
    out = json.loads(capsys.readouterr().out)
    final = out["predictions"]["1000"]
    assert final["actual"] == pytest.approx(law.true_loss(1000, count_p), rel=0.01)
    assert final["relative_error"]["temporal"] < 0.01
    assert set(final) >= {"temporal", "kaplan", "chinchilla", "actual"}
    assert "700" in out["predictions"] and (workdir / "scaling.png").stat().st_size > 10_000
    assert cli_main(["scaling", "fit", "--workdir", str(workdir), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "a1(N): constant" in text and "a2(N): power" in text


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli_main(["scaling", "fit", "--workdir", str(tmp_path)]) != 0
    assert "not a kyx workdir" in capsys.readouterr().err
