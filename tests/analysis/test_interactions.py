"""AND-OR interactions: transforms vs brute force, exact recovery of a known AND/OR
structure, universal matching on a trained model, batched masked forwards, the CLI."""
import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import kyx
from kyx import sharding
from kyx.analysis import interactions_dynamics as dyn
from kyx.analysis import interactions_fit as fit
from kyx.analysis import interactions_math as im
from kyx.analysis import interactions_model as model_lib
from kyx.analysis import interactions_order as order_lib
from kyx.analysis import interactions_samples, sites
from kyx.checkpoint import workdir as workdir_lib
from kyx.cli import main as cli_main
from kyx.errors import KyxError


# ------------------------------------------------------------- brute force
def _subsets(n):
    """Every subset as a frozenset, listed by bitmask index (bit j = player j)."""
    return [frozenset(j for j in range(n) if (i >> j) & 1) for i in range(1 << n)]


def _brute(v, gamma, q, n):
    """I_and, I_or straight from the definitions, with Python sets in float64."""
    sets = _subsets(n)
    index = {s: i for i, s in enumerate(sets)}
    full = frozenset(range(n))
    v_and = {s: 0.5 * (v[i] + q[i]) + gamma[i] for i, s in enumerate(sets)}
    v_or = {s: 0.5 * (v[i] + q[i]) - gamma[i] for i, s in enumerate(sets)}
    i_and, i_or = np.zeros(1 << n), np.zeros(1 << n)
    for s in sets:
        subs = [frozenset(c) for k in range(len(s) + 1) for c in itertools.combinations(s, k)]
        i_and[index[s]] = sum((-1) ** (len(s) - len(t)) * v_and[t] for t in subs)
        i_or[index[s]] = (v_or[frozenset()] if not s else
                          -sum((-1) ** (len(s) - len(t)) * v_or[full - t] for t in subs))
    return i_and, i_or, sets


def test_transforms_and_matching_equal_the_definitions():
    n = 5
    rng = np.random.default_rng(0)
    v, gamma, q = (rng.normal(size=1 << n) for _ in range(3))
    want_and, want_or, sets = _brute(v, gamma, q, n)
    got_and, got_or = im.and_or_interactions(v, gamma, q)
    np.testing.assert_allclose(got_and, want_and, atol=1e-5)
    np.testing.assert_allclose(got_or, want_or, atol=1e-5)
    a, o = fit.transform_matrices(n)  # the LP's sparse matrices are the same maps
    np.testing.assert_allclose(a @ (0.5 * (v + q) + gamma), want_and, atol=1e-9)
    np.testing.assert_allclose(o @ (0.5 * (v + q) - gamma), want_or, atol=1e-9)
    # universal matching, summed by hand: v+q(T) = Σ_{S⊆T} I_and(S) + I_or(∅) + Σ_{S∩T≠∅} I_or(S)
    for i, t in enumerate(sets):
        total = sum(want_and[j] for j, s in enumerate(sets) if s <= t) + want_or[0] + sum(
            want_or[j] for j, s in enumerate(sets) if s and s & t)
        assert abs(total - (v[i] + q[i])) < 1e-9
    np.testing.assert_allclose(im.reconstruct(want_and, want_or), v + q, atol=1e-5)
    assert im.universal_matching_error(v + q, want_and, want_or) < 1e-5
    np.testing.assert_allclose(im.zeta(im.mobius(v)), v, atol=1e-5)


def _hand_built(n, c=0.5):
    """v = c + x0·x1 + max(x2, x3) over n players (the rest are dummies)."""
    x = im.player_masks(n).astype(np.float64)
    return c + x[:, 0] * x[:, 1] + np.maximum(x[:, 2], x[:, 3])


@pytest.mark.parametrize("solver,n,options", [
    ("lp", 8, {}),
    ("sgd", 6, dict(lr=1e-4, steps=5000)),  # the papers' optimiser converges at small n
])
def test_recovers_a_known_and_or_structure(solver, n, options):
    v = _hand_built(n)
    dec = fit.fit(v, fit.FitOptions(solver=solver, q_thres=0.0, **options))
    and_01, or_23 = 0b11, 0b1100
    tol = 1e-6 if solver == "lp" else 2e-2
    assert abs(dec.i_and[and_01] - 1.0) < tol and abs(dec.i_or[or_23] - 1.0) < tol
    assert abs(dec.i_and[0] + dec.i_or[0] - 0.5) < tol  # v(x_∅)
    rest_and, rest_or = dec.i_and.copy(), dec.i_or.copy()
    rest_and[[0, and_01]] = 0.0
    rest_or[[0, or_23]] = 0.0
    assert np.abs(rest_and).max() < tol and np.abs(rest_or).max() < tol
    assert dec.loss_end < dec.loss_start  # the even split is not sparse (4.5 vs 2.5)
    prof = order_lib.strength_by_order(dec.i_and, dec.i_or)
    np.testing.assert_allclose(prof.positive, [0, 0, 1] + [0] * (n - 2), atol=tol)
    assert im.universal_matching_error(v, dec.i_and, dec.i_or) < 1e-5


def test_noise_box_holds_and_matching_is_exact_for_v_plus_q():
    v = _hand_built(6) + np.random.default_rng(1).normal(scale=0.02, size=64)
    dec = fit.fit(v, fit.FitOptions(q_thres=0.04))
    assert np.abs(dec.q).max() <= 0.04 * abs(v[-1] - v[0]) + 1e-7
    assert im.universal_matching_error(dec.v + dec.q, dec.i_and, dec.i_or) < 1e-5
    assert dec.loss_end < dec.loss_start


# --------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def trained(lm_workdir):
    """The session's small trained workdir, loaded once (no model init to compile here)."""
    return kyx.load(lm_workdir)


def test_batched_masked_values_equal_single_forwards(trained):
    module, params = trained.model, trained.params
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (12,), 0, 97), np.int32)
    sample = model_lib.Sample(tokens, np.arange(12, dtype=np.int32), 5, (2, 4, 7, 9, 11))
    base = model_lib.baseline_embedding(module, params, "mean", 0)
    mesh = sharding.make_mesh({"data": jax.device_count()})
    replicated = jax.device_put(params, jax.sharding.NamedSharding(mesh, P()))
    v = model_lib.masked_values(module, replicated, sample, base, mesh=mesh, chunk=8)
    # the unmasked input is the plain decoder's log-odds (no embed_edit, no sites code)
    logits = module.apply({"params": params}, jnp.asarray(tokens)[None])[0][0, -1]
    z = np.asarray(logits, np.float64)
    want_full = z[5] - np.log(np.sum(np.exp(np.delete(z, 5))))
    assert abs(v[-1] - want_full) < 1e-4
    embeds = np.array(module.apply({"params": params}, jnp.asarray(tokens)[None],
                                   method=lambda m, ids: m.embed(ids)))
    single = jax.jit(lambda x_btd: sites.run(module, params, jnp.asarray(tokens)[None],
                                             embed_edit=lambda _: x_btd)[0][0, -1])
    for t in (0, 0b00101, 0b10010, 0b11110):  # one input at a time, players replaced by hand
        x = embeds.copy()
        for j, p in enumerate(sample.players):
            if not (t >> j) & 1:
                x[0, p] = np.asarray(base)
        z = np.asarray(single(jnp.asarray(x)), np.float64)
        assert abs(v[t] - (z[5] - np.log(np.sum(np.exp(np.delete(z, 5)))))) < 1e-4


def test_baselines_and_player_rule(trained):
    module, params = trained.model, trained.params
    emb = np.asarray(nn.meta.unbox(params)["embed"]["embedding"])
    mean = model_lib.baseline_embedding(module, params, "mean", 0)
    assert np.abs(np.asarray(model_lib.baseline_embedding(module, params, "zeros", 0))).max() == 0
    eos = model_lib.baseline_embedding(module, params, "eos", 2)
    np.testing.assert_allclose(mean, emb.mean(0), atol=1e-6)
    np.testing.assert_allclose(eos, emb[2], atol=1e-6)
    assert model_lib.nearest_players([True, False, True, True, False, True], 3) == (2, 3, 5)
    with pytest.raises(KyxError, match="fewer than"):
        model_lib.nearest_players([True, False], 2)


def test_universal_matching_on_a_trained_model(trained):
    loaded = trained
    (sample,) = interactions_samples.pick_samples(loaded, 1, 8, seed=0, window=16)
    assert len(sample.players) == 8 and len(sample.tokens_t) == 16
    base = model_lib.baseline_embedding(loaded.model, loaded.params, "eos",
                                        loaded.tokenizer.pad_id)
    v = model_lib.masked_values(loaded.model, loaded.params, sample, base)
    dec = fit.fit(v)
    assert im.universal_matching_error(dec.v + dec.q, dec.i_and, dec.i_or) < 1e-4
    assert np.abs(dec.q).max() <= 0.04 * abs(v[-1] - v[0]) + 1e-6
    exact = fit.fit(v, fit.FitOptions(q_thres=0.0))  # no noise term: matching of v itself
    assert im.universal_matching_error(v, exact.i_and, exact.i_or) < 1e-4


def test_cli_writes_the_dynamics_and_rejects_bad_input(lm_workdir, tmp_path, capsys):
    out = tmp_path / "inter"
    assert cli_main(["interactions", "--workdir", lm_workdir, "--samples", "2",
                     "--players", "4", "--window", "8", "--out", str(out)]) == 0
    result = json.loads((out / "interactions.json").read_text())
    steps = sorted(int(s) for s in result["steps"])
    assert steps == sorted(dyn.checkpoint_sources(lm_workdir))  # every saved step
    assert steps == workdir_lib.checkpoint_steps(lm_workdir) and steps
    assert all(r["matching_error"] < 1e-4 for r in result["steps"].values())
    assert os.path.getsize(out / "interactions_orders.png") > 0
    assert "match_err" in capsys.readouterr().out
    for argv, message in [(["--workdir", str(tmp_path / "nope"), "--samples", "1"], "no such"),
                          (["--workdir", str(tmp_path), "--samples", "1"], "not a kyx workdir"),
                          (["--workdir", lm_workdir, "--samples", "1", "--players", "40"],
                           "--players must be")]:
        assert cli_main(["interactions", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err


def test_excp_only_steps_are_reconstructed(lm_workdir, tmp_path):
    """A step whose full checkpoint is gone is read back from the ExCP chain."""
    import shutil

    from kyx.commands import excp

    workdir = str(tmp_path / "run")
    shutil.copytree(lm_workdir, workdir)
    excp.compress(workdir)
    first = workdir_lib.checkpoint_steps(workdir)[0]
    loaded = kyx.load(workdir, first)
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(first)))
    sources = dyn.checkpoint_sources(workdir)
    assert sources[first] == "excp" and set(sources.values()) == {"excp", "full"}
    rebuilt = dict(jax.tree_util.tree_leaves_with_path(nn.meta.unbox(
        dyn.step_params(loaded, workdir, first, "excp"))))
    want = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(loaded.params))
    assert len(want) == len(rebuilt)
    for path, leaf in want:  # the chain's root entry is stored whole: an exact copy
        np.testing.assert_array_equal(np.asarray(rebuilt[path]), np.asarray(leaf))
