"""experiments/reproduce.py: verdicts against hand-checked cases, frequency buckets, the
held-out evaluator against the run's own eval, and every study at a 2-step scale
(results.json -> the same table, resume without retraining, changed settings refused)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kyx.analysis import heldout, verdict
from kyx.checkpoint.excp import ExcpChain
from kyx.checkpoint.workdir_lock import WorkdirLock
from kyx.errors import CheckpointError, ConfigError
from kyx.metrics import read_metrics
from kyx.train import continuation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one xdist worker builds the module fixture (pytest.ini: --dist loadgroup), not both
pytestmark = pytest.mark.xdist_group("reproduce_studies")


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_runner", os.path.join(
        ROOT, "experiments", "reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module    # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_verdicts():
    lower = verdict.compare([3.0, 3.1, 2.9], [2.0, 2.1, 1.9], "lower")
    assert lower["verdict"] == "reproduced" and lower["diff"] == pytest.approx(-1.0)
    assert lower["se"] == pytest.approx(np.sqrt(2 * 0.01 / 3))
    assert lower["p"] < 1e-3
    assert verdict.compare([3.0, 3.1, 2.9], [2.0, 2.1, 1.9], "higher")["verdict"] == "opposite"
    inside = verdict.compare([3.0, 3.5, 2.5], [2.9, 3.4, 2.4], "lower")
    assert inside["verdict"] == "not at this scale" and inside["p"] > 0.5
    assert verdict.compare([3.0], [2.0], "lower")["verdict"] == "single seed"
    assert verdict.compare([None, None], [1.0, 2.0], "lower")["verdict"] == "no data"
    # 3/3 vs 0/3 diverged: Fisher's exact p = 0.1, so three seeds cannot show it
    binary = verdict.compare([1, 1, 1], [0, 0, 0], "lower", binary=True)
    assert binary["p"] == pytest.approx(0.1) and binary["verdict"] == "not at this scale"
    binary = verdict.compare([1] * 6, [0] * 6, "lower", binary=True)
    assert binary["p"] == pytest.approx(2 / 924) and binary["verdict"] == "reproduced"
    with pytest.raises(ValueError, match="better"):
        verdict.compare([1.0], [2.0], "smaller")
    # a level claim: t = 15 / (5 / sqrt 3) = sqrt 27 on 2 df, two-sided p = 1 - t / sqrt(t^2 + 2)
    level = verdict.compare_to_target([60.0, 70.0, 65.0], 50.0, "higher")
    assert level["diff"] == 15.0 and level["se"] == pytest.approx(5 / np.sqrt(3))
    assert level["p"] == pytest.approx(1 - np.sqrt(27) / np.sqrt(29))
    assert level["verdict"] == "reproduced"
    assert verdict.compare_to_target([60.0, 70.0, 65.0], 50.0, "lower")["verdict"] == "opposite"
    assert verdict.compare_to_target([45.0, 60.0], 50.0, "higher")["verdict"] == \
        "not at this scale"
    assert verdict.compare_to_target([60.0], 50.0, "higher")["verdict"] == "single seed"


def test_frequency_buckets_split_training_mass_80_15_5():
    counts = np.array([3, 80, 0, 10, 5, 2])          # mass shares .03 .80 0 .10 .05 .02
    # sorted: id1 (before 0) frequent; id3 (.80), id4 (.90) medium; id0 (.95), id5 (.98),
    # id2 (never seen) rare
    np.testing.assert_array_equal(heldout.frequency_buckets(counts), [2, 0, 2, 1, 1, 2])


def _study_env(root, devices: int) -> dict:
    """The environment of the studies' processes: ``devices`` simulated CPU devices and one
    persistent compilation cache beside ``root``, so that a later process continuing a
    study's run loads the very executables that trained it (separate compilations of one
    program need not agree to the last bit)."""
    flags = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "PYTHONPATH": ROOT, "KYX_COMPILATION_CACHE": "1",
            "XLA_FLAGS": flags.strip(),
            "KYX_COMPILATION_CACHE_DIR": str(root.parent / f"{root.name}_jax_cache")}


@pytest.fixture(scope="module")
def study_root(tmp_path_factory, fast_overrides):
    """Every study at 2 steps (excp: 6), head_position with 2 seeds (real p-values), the
    others 1: run as users run them, one process per study, sharing a persistent
    compilation cache (most variants compile the programs of another)."""
    exp = _reproduce()
    root = tmp_path_factory.mktemp("reproduce")
    extra = [f"--config.{o}" for o in fast_overrides]
    # one device where the test reads only the study's bookkeeping (sharding is tested
    # elsewhere); the excp study on 8, as a test continues its run. It needs a chain of 3
    # checkpoints: 6 steps, one every 2.
    one, eight = _study_env(root, 1), _study_env(root, 8)
    for name, seeds, steps, more, study_env in (
            ("head_position", 2, 2, [], one), ("mile", 1, 2, [], one), ("logits", 1, 2, [], one),
            ("moe_routing", 1, 2, [], one),
            ("excp", 1, 6, ["--config.checkpoint.every=2"], eight)):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "experiments", "reproduce.py"), "--study", name,
             "--root", str(root), "--seeds", str(seeds), "--steps", str(steps), *extra, *more],
            env=study_env, capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stdout[-4000:], proc.stderr[-4000:])
    return exp, root, extra


@pytest.mark.slow
def test_every_study_runs_and_renders_from_its_json(study_root, capsys):
    exp, root, extra = study_root
    for name in exp.STUDIES.names():
        doc = json.loads((root / name / "results.json").read_text())
        spec = exp.STUDIES.get(name).spec
        variants = exp.sweep.load_sweep(spec.config, spec.sweep, exp.VARIANT_KEYS)
        assert list(doc["results"]) == [v["name"] for v in variants]
        for v in variants:   # a warm-started variant trains the second half of the steps
            r = doc["results"][v["name"]]
            full = 6 if name == "excp" else 2
            assert r["steps"] == (1 if v.get("prepare") == "upcycle_half" else full), name
            assert all(k in r for k, _, _ in spec.columns), name
        assert (root / name / exp.PLOT).stat().st_size > 0
        assert len(doc["claims"]) == len(spec.claims)
        capsys.readouterr()
        assert exp.main(["--render", name, "--root", str(root)]) == 0
        assert capsys.readouterr().out == (root / name / "results.md").read_text()
    head = json.loads((root / "head_position" / "results.json").read_text())
    assert head["seeds"] == 2 and all(c["p"] is not None for c in head["claims"])
    assert {c["verdict"] for c in head["claims"]} <= {"reproduced", "opposite",
                                                       "not at this scale"}
    mile = json.loads((root / "mile" / "results.json").read_text())
    assert {c["verdict"] for c in mile["claims"]} == {"single seed"}
    page = root / "results.md"
    assert exp.main(["--page", str(page), "--root", str(root)]) == 0
    text = page.read_text()
    assert all(f"## {exp.STUDIES.get(n).spec.title}" in text for n in exp.STUDIES.names())
    assert all(f"(results/{n}.png)" in text and (root / "results" / f"{n}.png").exists()
               for n in exp.STUDIES.names())
    # a later page from a root without these runs keeps them from the copies beside it
    elsewhere = root / "other_session"
    elsewhere.mkdir()
    assert exp.main(["--page", str(page), "--root", str(elsewhere)]) == 0
    assert page.read_text() == text
    (root / "results" / "mile.json").unlink()
    assert exp.main(["--page", str(page), "--root", str(elsewhere)]) == 0
    assert "Not run yet: mile." in page.read_text() and "## MiLe" not in page.read_text()


@pytest.mark.slow
def test_warm_started_curve_is_drawn_after_its_dense_phase(study_root, fast_overrides,
                                                           monkeypatch):
    """The upcycled variant trains the second half of the budget: its curve starts there."""
    exp, root, _ = study_root
    drawn = {}
    monkeypatch.setattr(exp.sweep, "plot", lambda root, names, out, seeds, offsets=None:
                        drawn.update(offsets))
    exp.run_study("moe_routing", str(root), 1, 2, list(fast_overrides))   # all runs reused
    assert drawn == {"upcycled": 1}


@pytest.mark.slow
def test_upcycled_variant_starts_from_the_upcycled_dense_run(study_root):
    exp, root, _ = study_root
    prep = root / "moe_routing" / "_prepare" / "upcycled" / "upcycled"
    dense_cfg = json.loads((prep.parent / "dense" / "config.json").read_text())
    assert dense_cfg["model"]["moe_num_experts"] == 0 and dense_cfg["train"]["steps"] == 1
    run_cfg = json.loads((root / "moe_routing" / "upcycled" / "config.json").read_text())
    assert run_cfg["init_from"] == str(prep) and run_cfg["train"]["steps"] == 1
    assert run_cfg["data"]["seed"] == exp.WARM_START_DATA_SEED
    up_cfg = json.loads((prep / "config.json").read_text())
    assert up_cfg["upcycle"]["source_step"] == 1
    assert up_cfg["model"]["moe_num_experts"] == run_cfg["model"]["moe_num_experts"] == 8


@pytest.mark.slow
def test_excp_variants_share_one_run_and_measure_each_phase(study_root):
    exp, root, _ = study_root
    doc = json.loads((root / "excp" / "results.json").read_text())
    base = root / "excp" / "_prepare" / "excp_run" / "seed0"
    assert len(json.loads((base / "full_continuations.json").read_text())) == 2  # steps 4, 6
    ratios = []
    for name, key, value in (("a5e-5", "alpha", 5e-5), ("a5e-4", "alpha", 5e-4),
                             ("a2e-3", "alpha", 2e-3), ("werr1e-2", "max_werr", 0.01)):
        r = doc["results"][name]
        cfg = json.loads((root / "excp" / name / "config.json").read_text())
        assert cfg["checkpoint"]["excp"][key] == value
        # the variants are copies of one run: identical training, different chains
        assert r["eval_loss"] == doc["results"]["a5e-5"]["eval_loss"]
        assert (r["excp_step_early"], r["excp_step_mid"], r["excp_step_late"]) == (4, 6, 6)
        assert r["excp_continue_steps"] == 1
        assert all(np.isfinite(r[f"excp_dloss_pct_{p}"]) for p in exp.EXCP_PHASES)
        ratios.append(r["excp_ratio_late"])
        # the paper's protocol: a chain begun late (step 4 stored losslessly, then step 6)
        assert r["excp_step_latechain_start"] == 4 and np.isfinite(r["excp_dloss_pct_latechain"])
        assert r["excp_ratio_latechain"] > 1
        for scratch in ("_continuations", "_late_chain"):
            assert not (root / "excp" / f"{name}{scratch}").exists()
    assert ratios[0] <= ratios[1] <= ratios[2]      # a larger alpha prunes more
    assert [c["verdict"] for c in doc["claims"]] == ["single seed"] * 16


@pytest.mark.slow
def test_continuation_from_a_full_checkpoint_retraces_the_run(study_root, tmp_path):
    _, root, _ = study_root
    base = root / "excp" / "_prepare" / "excp_run" / "seed0"
    chain_before = sorted(os.listdir(base / "excp"))
    copy = continuation.copy_until(str(base), str(tmp_path / "copy"), 4)
    assert sorted(int(n) for n in os.listdir(os.path.join(copy, "checkpoints"))
                  if n.isdigit()) == [2, 4]
    assert ExcpChain(os.path.join(copy, "excp")).steps() == [2, 4]
    assert max(r["step"] for r in read_metrics(copy)) <= 4
    assert sorted(os.listdir(base / "excp")) == chain_before          # source untouched
    # steps 5-6 again from step 4, on the run's own 6-step schedule: the run's own eval
    # (in a process like the study's, with its compiled programs)
    run_eval = [r["eval/loss"] for r in read_metrics(str(base)) if "eval/loss" in r][-1]
    code = ("import kyx; kyx.enable_compilation_cache(); "
            "from kyx.train.continuation import continuation; "
            f"print(repr(continuation({str(base)!r}, {str(tmp_path / 'again')!r}, 4, 2)))")
    proc = subprocess.run([sys.executable, "-c", code], env=_study_env(root, 8),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) == run_eval
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["optim"]["schedule_steps"] == 6 and cfg["train"]["steps"] == 6
    with pytest.raises(CheckpointError, match="no ExCP step 5"):
        continuation.continuation(str(base), str(tmp_path / "x"), 5, 1, "excp")
    with pytest.raises(ConfigError, match="source"):
        continuation.continuation(str(base), str(tmp_path / "x"), 4, 1, "chain")


def test_plain_sweep_runner_refuses_a_study_only_variant():
    exp = _reproduce()
    with pytest.raises(ConfigError, match="prepare"):
        exp.sweep.load_sweep(os.path.join(ROOT, "configs", "moe.py:tiny"), "routing_study")


@pytest.mark.slow
def test_resume_reuses_runs_and_refuses_other_settings(study_root):
    exp, root, extra = study_root
    metrics = root / "head_position" / "rope" / "seed0" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    before = (root / "head_position" / "results.md").read_text()
    assert exp.main(["--study", "head_position", "--root", str(root), "--seeds", "2",
                     "--steps", "2", *extra]) == 0
    assert metrics.stat().st_mtime_ns == stamp
    assert (root / "head_position" / "results.md").read_text() == before
    with pytest.raises(SystemExit, match="other overrides"):
        exp.main(["--study", "head_position", "--root", str(root), "--seeds", "2",
                  "--steps", "3", *extra])
    run_file = root / "head_position" / "rope" / "seed0" / exp.RUN_FILE
    good = run_file.read_bytes()
    run_file.write_bytes(good[:len(good) // 2])                     # a torn write
    try:
        with pytest.raises(SystemExit, match=f"{run_file}.*unreadable"):
            exp.main(["--study", "head_position", "--root", str(root), "--seeds", "2",
                      "--steps", "2", *extra])
    finally:
        run_file.write_bytes(good)
    with pytest.raises(SystemExit, match="no --config"):
        exp.main(["--config", "configs/pretrain.py:tiny", "--study", "mile"])
    with WorkdirLock(str(root / "head_position"), "reproduce --study head_position"):
        with pytest.raises(SystemExit, match="in use by"):    # a second process on it
            exp.main(["--study", "head_position", "--root", str(root), "--seeds", "2",
                      "--steps", "2", *extra])


@pytest.mark.slow
def test_heldout_matches_the_runs_own_eval(study_root):
    _, root, _ = study_root
    workdir = str(root / "head_position" / "rope" / "seed0")
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    run_eval = [r for r in rows if "eval/loss" in r][-1]
    out = heldout.evaluate(workdir)       # the run's own validation pass and params
    assert out["tokens"] == run_eval["eval/tokens"]
    np.testing.assert_allclose(out["loss"], run_eval["eval/loss"], rtol=1e-5)
    shares = [out[f"share_{b}"] for b in heldout.BUCKETS]
    assert sum(shares) == pytest.approx(1.0) and min(shares) > 0
    np.testing.assert_allclose(
        sum(out[f"loss_{b}"] * out[f"share_{b}"] for b in heldout.BUCKETS), out["loss"],
        rtol=1e-5)
    long = heldout.evaluate(workdir, seq_len=64, frequency=False)
    assert long["seq_len"] == 64 and 0 < long["share_beyond"] < 1
    np.testing.assert_allclose(long["loss_beyond"] * long["share_beyond"]
                               + long["loss_within"] * (1 - long["share_beyond"]),
                               long["loss"], rtol=1e-5)
