"""Post-training test fixtures: small overrides, one shared tiny pretraining run, and a
helper that runs a trainer's step function on a given mesh (for 8-vs-1-device checks)."""
import dataclasses
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kyx import config as config_lib
from kyx import sharding
from kyx.train import loop, pretrain, registry
from kyx.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_path(name):
    return os.path.join(ROOT, "configs", f"{name}.py")


@pytest.fixture(scope="session")
def post_config():
    """post_config(name, overrides) -> the configs/<name>.py:tiny config with overrides."""
    return lambda name, overrides: config_lib.load(config_path(name) + ":tiny", overrides)


LONGER = ["data.seq_len=64", "model.max_seq_len=64"]


@pytest.fixture(scope="session")
def post_overrides(fast_overrides):
    """fast_overrides with room for chat-formatted records and small mined datasets."""
    return fast_overrides + LONGER + [
        "data.records.max_train=64", "data.records.max_eval=16",
        "data.records.max_prompt_chars=120", "data.records.max_response_lines=2",
        "data.records.max_response_chars=80"]


@pytest.fixture(scope="session")
def pretrained(fast_overrides, tmp_path_factory):
    """A 4-step tiny pretraining workdir to start post-training from."""
    workdir = tmp_path_factory.mktemp("pretrained")
    cfg = config_lib.load(config_path("pretrain") + ":tiny",
                          fast_overrides + LONGER + ["train.steps=4"])
    loop.run(pretrain.build(cfg), str(workdir))
    return str(workdir)


@pytest.fixture(scope="session")
def reward_model(post_overrides, pretrained, post_config, tmp_path_factory):
    """A 2-step tiny reward-model workdir (configs/rm.py) on the pretrained model."""
    workdir = tmp_path_factory.mktemp("rm")
    cfg = post_config("rm", post_overrides + [f"init_from={pretrained}", "train.steps=2"])
    loop.run(registry.build(cfg), str(workdir))
    return str(workdir)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


# XLA's LLVM backend optimisation off for the step programs compared across meshes:
# compiling dominates these tests (tiny models run a step in ~0.1 s) and O0 roughly
# halves it; the 1- and 8-device programs are compiled alike, so the comparison (and
# its tolerance) is unchanged
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run_steps(trainer, mesh, preset, batches, seed=0):
    """Apply `trainer.step_fn` to numpy `batches` on `mesh`, as the loop does.

    The state is created from `trainer.models` on `mesh`: each model's `init` (brought to
    the host first, e.g. DPO's frozen reference is a copy of the initial policy), else a
    seeded init. Returns (per-step metrics, final params of the trained model) on the host.
    """
    rules = sharding.get_rules(preset)
    models = {n: dataclasses.replace(s, init=(lambda s=s: _host(s.init())) if s.init else None)
              for n, s in trainer.models.items()}
    trained = state_lib.trainable(models)[0]
    state_sh, _ = state_lib.state_shardings(models, mesh, rules, trainer.stats)
    state = state_lib.create(models, mesh, rules, seed, trainer.stats)
    batch_sh = {k: sharding.named_sharding(v, mesh, rules) for k, v in trainer.batch_axes.items()}
    step = jax.jit(trainer.step_fn, in_shardings=(state_sh, batch_sh, None),
                   out_shardings=(state_sh, None), compiler_options=COMPILER_OPTIONS)
    metrics = []
    with sharding.use_mesh(mesh, rules):
        for i, b in enumerate(batches):
            dev = {k: jax.device_put(v, batch_sh[k]) for k, v in b.items()}
            state, m = step(state, dev, jax.random.fold_in(jax.random.key(seed), i))
            metrics.append(_host(m))
    return metrics, _host(state.params(trained))


def assert_same_run(a, b, tol=1e-4, step_functions=(), same_params=None):
    """Metrics and params equal within ``tol``. ``step_functions``: metrics that count
    signs (e.g. DPO's accuracy, the share of pairs with margin > 0): a margin within
    rounding of 0 (policy == reference at the first step) flips between device layouts,
    so they are not compared; their continuous inputs (the margins) are.
    ``same_params(x1, x8)``: another check of each pair of param leaves (16-bit params)."""
    (m1, p1), (m8, p8) = a, b
    for s1, s8 in zip(m1, m8):
        for k in s1:
            if k not in step_functions:
                np.testing.assert_allclose(s8[k], s1[k], rtol=tol, atol=tol, err_msg=k)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        if same_params is None:
            np.testing.assert_allclose(y, x, rtol=tol, atol=tol)
        else:
            same_params(x, y)


@pytest.fixture
def steps_on_mesh():
    """steps_on_mesh(trainer, batches) -> (metrics, params) on the 2x4 data x fsdp mesh."""
    return lambda trainer, batches: run_steps(
        trainer, sharding.make_mesh({"data": 2, "fsdp": 4}), "fsdp", batches)


# 8-device meshes per rule preset (1-device runs do not depend on the preset)
PRESET_MESHES = {
    "dp": {"data": 8},
    "fsdp": {"data": 2, "fsdp": 4},
    "fsdp_tp": {"data": 2, "fsdp": 2, "tensor": 2},
    "ep": {"data": 2, "expert": 4},
}
DENSE_PRESETS = ("dp", "fsdp", "fsdp_tp")


@pytest.fixture
def eight_vs_one():
    """eight_vs_one(trainer, batches, presets=DENSE_PRESETS): run on 1 device, then on the
    8-device mesh of every preset; each must match the 1-device run (``assert_same_run``).
    Returns (1-device run, {preset: 8-device run})."""
    def compare(trainer, batches, presets=DENSE_PRESETS, step_functions=(), same_params=None):
        one = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
        ran1 = run_steps(trainer, one, "dp", batches)
        ran8 = {}
        for preset in presets:
            ran8[preset] = run_steps(trainer, sharding.make_mesh(PRESET_MESHES[preset]),
                                     preset, batches)
            assert_same_run(ran1, ran8[preset], step_functions=step_functions,
                            same_params=same_params)
        return ran1, ran8
    return compare


def _losses(workdir):
    from kyx.metrics import read_metrics
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.fixture
def train_process():
    """train_process(config_name, workdir, overrides, env=None) -> Popen of `python -m kyx
    train --config configs/<config_name>.py:tiny` in a fresh process (one CPU device);
    `env`: extra environment variables (e.g. a compilation cache shared by several runs)."""
    def start(name, workdir, overrides, env=None):
        args = [sys.executable, "-m", "kyx", "train", "--config", config_path(name) + ":tiny",
                "--workdir", str(workdir)] + [f"--config.{o}" for o in overrides]
        env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT, **(env or {})}
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, text=True)
    return start


@pytest.fixture
def wait_for_step():
    """wait_for_step(workdir, step, proc): block until metrics.jsonl has `step`."""
    def wait(workdir, step, proc, timeout=240):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
            if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
                if max(_losses(workdir), default=0) >= step:
                    return
            time.sleep(0.2)
        raise AssertionError("timed out")
    return wait


@pytest.fixture
def losses():
    """losses(workdir) -> {step: train/loss} from metrics.jsonl."""
    return _losses


@pytest.fixture
def kill_and_resume(train_process, wait_for_step):
    """kill_and_resume(name, root, args, kill_after) -> (uninterrupted dir, resumed dir):
    configs/<name>.py:tiny run once killed with SIGKILL after step `kill_after` and run
    again on its workdir (which must report the resume), and once to the end.

    The three processes share a persistent compilation cache (root/jax_cache; the test
    is of the resume, not of compiling the same programs three times): the killed run,
    first, compiles and writes every program it reaches, so its timing up to the kill is
    that of an uncached run; the resumed and the uninterrupted runs load them."""
    import signal

    def run(name, root, args, kill_after):
        ref, killed = root / "ref", root / "killed"
        cache = {"KYX_COMPILATION_CACHE": "1", "KYX_COMPILATION_CACHE_DIR": str(root / "jax_cache")}
        proc = train_process(name, killed, args, cache)
        wait_for_step(killed, kill_after, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = train_process(name, killed, args, cache)
        out, _ = resumed.communicate()
        assert resumed.returncode == 0, out
        assert "resumed from" in out
        proc = train_process(name, ref, args, cache)
        assert proc.wait() == 0, proc.stdout.read()
        return ref, killed
    return run
