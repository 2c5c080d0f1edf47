"""ExCP compression core: per-tensor formulas, quantisation, chain round trips, corruption."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kyx.checkpoint.excp import (ExcpChain, ExcpOptions, dequantize, flat_to_tree, flatten_adam,
                                 kmeans_1d, pack_indices, prune_moments, prune_weight_residual,
                                 quantize, unflatten_adam, unpack_indices)
from kyx.checkpoint.excp_store import StepReader
from kyx.errors import CheckpointError, ConfigError

F32 = np.float32


def bits_equal(a, b):
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_weight_threshold_alpha_branch():
    dw = np.array([1, -2, 3, -4, 5], F32)            # median |dw| = 3
    v = np.full(5, 1e-8, F32)                        # alpha / sqrt(mean v) = 5e-5 / 1e-4 = 0.5
    pruned, keep, r_w = prune_weight_residual(dw, v, alpha=5e-5)
    assert r_w == pytest.approx(1.5, rel=1e-5)
    np.testing.assert_array_equal(keep, [False, True, True, True, True])
    np.testing.assert_array_equal(pruned, [0, -2, 3, -4, 5])


@pytest.mark.parametrize("v_val", [1e-14, 0.0])       # factor 500 -> capped; mean v = 0 -> 2.5
def test_weight_threshold_cap(v_val):
    dw = np.array([1, -2, 3, -7.4, 7.6], F32)         # median 3 -> r_w = 7.5
    pruned, keep, r_w = prune_weight_residual(dw, np.full(5, v_val, F32), alpha=5e-5)
    assert r_w == pytest.approx(7.5)
    np.testing.assert_array_equal(keep, [False, False, False, False, True])
    assert pruned[4] == F32(7.6) and np.all(pruned[:4] == 0)


def test_moment_pruning_masks():
    m = np.array([0.1, -1.0, 0.2, 3.0, -0.05, 0.9, -2.0, 0.05], F32)
    v = np.arange(1, 9, dtype=F32)
    thresh = 2.0 * np.mean(np.abs(m))                 # = 1.825
    m_p, v_p, keep = prune_moments(m, v, beta=2.0)
    np.testing.assert_array_equal(keep, np.abs(m) > thresh)
    np.testing.assert_array_equal(m_p, np.where(keep, m, 0))
    np.testing.assert_array_equal(v_p, np.where(keep, v, 0))   # v follows |m|, never |v|
    weight_keep = np.array([True, True, True, False, True, True, True, True])
    m_p, v_p, keep = prune_moments(m, v, beta=2.0, weight_keep=weight_keep)
    assert m_p[3] == 0 and v_p[3] == 0 and m_p[6] == -2.0 and v_p[6] == 7.0
    np.testing.assert_array_equal(np.flatnonzero(m_p), [6])


def test_kmeans_obvious_clusters():
    rng = np.random.default_rng(0)
    groups = [c + 0.01 * rng.standard_normal(50) for c in (-3.0, 1.0, 5.0)]
    cent = kmeans_1d(np.concatenate(groups)[rng.permutation(150)], 3)
    np.testing.assert_allclose(cent, [g.mean() for g in groups], rtol=1e-12)
    assert np.array_equal(cent, kmeans_1d(np.concatenate(groups), 3))   # deterministic


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("space", ["linear", "log", "sqrt"])
def test_quantize_codebook_and_zero_code(bits, space):
    rng = np.random.default_rng(bits)
    x = rng.laplace(size=(37, 29)).astype(F32)
    x = np.abs(x) if space != "linear" else x
    x[rng.random(x.shape) < 0.5] = 0
    q = quantize(x, bits, space)
    y = dequantize(q)
    assert q.kind == "kmeans" and q.codebook.dtype == np.float16 and y.dtype == F32
    assert np.all(y[x == 0] == 0) and not np.signbit(y[x == 0]).any()
    assert np.unique(y[y != 0]).size <= 2 ** bits - 1
    if space != "linear":
        assert y.min() >= 0
    err = np.abs(y - x)[x != 0].mean() / np.abs(x[x != 0]).mean()
    assert err < {2: 0.6, 4: 0.2, 8: 0.03}[bits]


def test_quantize_few_nonzeros_is_exact():
    x = np.zeros(100, F32)
    x[[3, 50, 99]] = [1.2345678e-7, -3.0, 1e30]
    q = quantize(x, 4)
    assert q.kind == "exact"
    assert bits_equal(dequantize(q), x)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 1001])
def test_pack_roundtrip(bits, n):
    idx = np.random.default_rng(n).integers(0, 2 ** bits, n).astype(np.uint8)
    packed = pack_indices(idx, bits)
    assert packed.size == -(-n * bits // 8)
    np.testing.assert_array_equal(unpack_indices(packed, bits, n), idx)


def random_state(rng, shapes):
    w = {k: (0.02 * rng.standard_normal(s)).astype(F32) for k, s in shapes.items()}
    m = {k: (1e-3 * rng.standard_normal(s)).astype(F32) for k, s in shapes.items()}
    v = {k: np.square(1e-3 * rng.standard_normal(s)).astype(F32) for k, s in shapes.items()}
    return w, m, v


def adam_like_steps(rng, w, m, v, n=5):
    for k in w:
        for _ in range(n):
            g = (1e-3 * rng.standard_normal(w[k].shape)).astype(F32)
            m[k] = F32(0.9) * m[k] + F32(0.1) * g
            v[k] = F32(0.95) * v[k] + F32(0.05) * g * g
            w[k] = w[k] - F32(1e-3) * m[k] / (np.sqrt(v[k]) + F32(1e-8))
    return w, m, v


SHAPES = {"emb": (64, 33), "mlp/kernel": (33, 47), "norm": (33,), "odd": (3, 5, 7), "tiny": (2,),
          "scalar": (), "empty": (0, 3)}


@pytest.mark.parametrize("reference", ["lossless", "zeros"])
def test_lossless_options_bit_exact(tmp_path, reference):
    rng = np.random.default_rng(1)
    chain = ExcpChain(tmp_path, ExcpOptions(prune=False, quantize=False), reference=reference)
    saved = {}
    w, m, v = random_state(rng, SHAPES)
    for step in (0, 10, 20):
        w, m, v = adam_like_steps(rng, w, m, v, n=1)
        w["norm"][:3] = [-0.0, np.inf, np.nan]   # signed zeros and non-finite survive XOR
        chain.append(step, w, m, v)
        saved[step] = [{k: x.copy() for k, x in d.items()} for d in (w, m, v)]
    fresh = ExcpChain(tmp_path)
    for step, orig in saved.items():
        for got, want in zip(fresh.reconstruct(step), orig):
            assert all(bits_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("reference", ["lossless", "zeros", "init"])
@pytest.mark.parametrize("opts", [ExcpOptions(), ExcpOptions(quantize=False),
                                  ExcpOptions(max_werr=0.05),
                                  ExcpOptions(prune=False, bits=2, v_space="log", coder="lzma")])
def test_chain_of_five_matches_fresh_reader(tmp_path, reference, opts):
    rng = np.random.default_rng(2)
    w, m, v = random_state(rng, SHAPES)
    ref = {k: x.copy() for k, x in w.items()} if reference == "init" else reference
    chain = ExcpChain(tmp_path, opts, reference=ref)
    running = {}
    for step in range(100, 600, 100):
        w, m, v = adam_like_steps(rng, w, m, v)
        stats, running[step] = chain.append(step, w, m, v, return_reconstruction=True)
        assert stats["ratio"] > 1 and set(stats["groups"]) == {"w", "m", "v"}
        assert np.all(running[step][2]["emb"] >= 0)
    fresh = ExcpChain(tmp_path)
    assert fresh.steps() == list(running) and fresh.options == opts
    for step, want in running.items():
        got = fresh.reconstruct(step)
        for g_got, g_want in zip(got, want):
            assert all(bits_equal(g_got[k], g_want[k]) for k in SHAPES), step
    # a reopened chain rebuilds its running reconstruction from disk and keeps appending
    w, m, v = adam_like_steps(rng, w, m, v)
    _, rec = fresh.append(600, w, m, v, return_reconstruction=True)
    assert all(bits_equal(a[k], b[k]) for a, b in zip(rec, ExcpChain(tmp_path).reconstruct(600))
               for k in SHAPES)


def test_error_bounded_pruning_keeps_each_tensor_within_its_bound(tmp_path):
    """max_werr replaces alpha: per tensor, the strongest pruning whose reconstruction stays
    within ||W - W_hat|| <= max_werr ||W||; a residual 1% of ||W|| can go to the 2.5 x
    median cap (~10% of a Gaussian kept) at a 2% bound, not at 0.2%."""
    rng = np.random.default_rng(6)
    w0 = {"a": rng.standard_normal((64, 48)).astype(F32)}
    dw = (1e-2 * rng.standard_normal((64, 48))).astype(F32)
    w1 = {"a": w0["a"] + dw}
    m = {"a": (1e-3 * rng.standard_normal((64, 48))).astype(F32)}
    v = {"a": np.square(m["a"])}
    kept = {}
    for bound in (2e-3, 5e-3, 2e-2):
        chain = ExcpChain(tmp_path / str(bound), ExcpOptions(max_werr=bound))
        chain.append(0, w0, m, v)
        stats, (w_hat, _, _) = chain.append(1, w1, m, v, return_reconstruction=True)
        err = np.linalg.norm(w1["a"] - w_hat["a"]) / np.linalg.norm(w1["a"])
        assert err <= bound and stats["groups"]["w"]["rel_err"] == pytest.approx(err, rel=1e-4)
        kept[bound] = stats["groups"]["w"]["kept"]
    capped = np.mean(prune_weight_residual(dw, v["a"], factor=2.5)[1])
    assert kept[2e-3] > kept[5e-3] > kept[2e-2] == pytest.approx(capped)
    with pytest.raises(ConfigError, match="max_werr"):
        ExcpOptions(max_werr=1.0)


def test_pruned_entries_decode_to_zero(tmp_path):
    rng = np.random.default_rng(3)
    w, m, v = random_state(rng, SHAPES)
    chain = ExcpChain(tmp_path)
    chain.append(0, w, m, v)
    w2, m2, v2 = adam_like_steps(rng, {k: x.copy() for k, x in w.items()}, m, v)
    _, (w_hat, m_hat, v_hat) = chain.append(1, w2, m2, v2, return_reconstruction=True)
    dw = w2["emb"] - w["emb"]
    _, keep, _ = prune_weight_residual(dw, v2["emb"])
    _, _, mkeep = prune_moments(m2["emb"], v2["emb"], 2.0, keep)
    assert np.array_equal(w_hat["emb"][~keep], w["emb"][~keep])   # residual exactly zero
    assert np.all(m_hat["emb"][~mkeep] == 0) and np.all(v_hat["emb"][~mkeep] == 0)
    assert np.all(v_hat["emb"][mkeep] > 0)


def build_chain(tmp_path, n=5):
    rng = np.random.default_rng(4)
    w, m, v = random_state(rng, SHAPES)
    chain = ExcpChain(tmp_path)
    for step in range(100, 100 * (n + 1), 100):
        w, m, v = adam_like_steps(rng, w, m, v, n=1)
        chain.append(step, w, m, v)
    return chain


def test_reading_steps_in_order_reads_each_link_once(tmp_path):
    build_chain(tmp_path)
    want = {step: ExcpChain(tmp_path).reconstruct(step, moments=False)[0]
            for step in range(100, 600, 100)}  # each from a fresh reader: walks from the root
    reader = ExcpChain(tmp_path)
    calls = []
    inner = reader._read
    reader._read = lambda entry, *a, **k: calls.append(entry["step"]) or inner(entry, *a, **k)
    for step in range(100, 600, 100):
        got = reader.reconstruct(step, moments=False)[0]
        assert all(bits_equal(got[k], want[step][k]) for k in SHAPES), step
        assert not next(iter(got.values())).flags.writeable  # shared with the reader's memo
    assert calls == [100, 200, 300, 400, 500]  # not 1 + 2 + 3 + 4 + 5 links
    calls.clear()
    for step in (300, 500):  # backwards, then forwards again: still the right weights
        got = reader.reconstruct(step)[0]
        assert all(bits_equal(got[k], want[step][k]) for k in SHAPES), step
    assert calls == [100, 200, 300, 400, 500]  # 300 from the root, 500 from 300


def test_corrupted_blob_names_step_and_tensor(tmp_path):
    chain = build_chain(tmp_path)
    path = os.path.join(tmp_path, "step_00000300.excp")
    with StepReader(path, "step 300") as rd:
        by_name = {t["name"]: t for t in rd.footer["tensors"]}
    entry = by_name["emb"]["m"]
    data = bytearray(open(path, "rb").read())
    data[entry["off"] + entry["len"] // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=r"step 300, tensor 'emb' \(m\).*checksum"):
        ExcpChain(tmp_path).reconstruct(300)
    # a later step's walk reads only the weight blobs of step 300
    assert ExcpChain(tmp_path).reconstruct(500)[0].keys() == SHAPES.keys()
    entry = by_name["mlp/kernel"]["w"]
    data[entry["off"]] ^= 0xFF
    open(path, "wb").write(bytes(data))
    fresh = ExcpChain(tmp_path)
    w, m, v = fresh.reconstruct(200)
    with pytest.raises(CheckpointError, match=r"step 300, tensor 'mlp/kernel' \(w\)"):
        fresh.append(600, w, m, v)    # rebuilding the newest reconstruction walks through 300
    chain.append(600, w, m, v)        # the writer that holds it in memory carries on


def test_truncated_file_and_missing_link(tmp_path):
    build_chain(tmp_path)
    p400 = os.path.join(tmp_path, "step_00000400.excp")
    open(p400, "r+b").truncate(50)
    with pytest.raises(CheckpointError, match="step 400.*truncated or corrupted"):
        ExcpChain(tmp_path).reconstruct(500)
    os.remove(os.path.join(tmp_path, "step_00000200.excp"))
    with pytest.raises(CheckpointError, match="step 200.*missing"):
        ExcpChain(tmp_path).reconstruct(300)
    chain = ExcpChain(tmp_path)
    chain.manifest["steps"] = [e for e in chain.manifest["steps"] if e["step"] != 200]
    with pytest.raises(CheckpointError, match="step 300 needs step 200"):
        chain.reconstruct(300)
    with pytest.raises(CheckpointError, match="no ExCP step 250"):
        chain.reconstruct(250)


def test_truncate_then_append(tmp_path):
    chain = build_chain(tmp_path, n=3)
    with pytest.raises(CheckpointError, match="truncate"):
        chain.append(200, *chain.reconstruct(300))
    assert chain.truncate(100) == [200, 300]
    assert not os.path.exists(os.path.join(tmp_path, "step_00000300.excp"))
    w, m, v = chain.reconstruct(100)
    chain.append(150, {k: x + 1e-3 for k, x in w.items()}, m, v)
    assert ExcpChain(tmp_path).steps() == [100, 150]


def test_optax_roundtrip(tmp_path):
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
              "norm": {"scale": jnp.ones(3, jnp.bfloat16)},
              "layers": {"mlp": jnp.arange(24.0).reshape(2, 4, 3)}}   # nn.scan stack
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        1e-3, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    state = tx.init(params)
    for i in range(3):
        grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.1 * (i + 1), p.dtype), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    w, m, v = flatten_adam(params, state)
    assert set(w) == {"dense/kernel", "dense/bias", "norm/scale", "layers/mlp@0", "layers/mlp@1"}
    np.testing.assert_array_equal(w["layers/mlp@1"], np.asarray(params["layers"]["mlp"][1]))
    assert all(x.dtype == F32 for x in m.values()) and m["dense/bias"].any()
    chain = ExcpChain(tmp_path, ExcpOptions(prune=False, quantize=False))
    chain.append(3, w, m, v, meta={"count": 3})
    assert ExcpChain(tmp_path).meta(3) == {"count": 3}
    w_hat, m_hat, v_hat = ExcpChain(tmp_path).reconstruct(3)
    new_params = flat_to_tree(params, w_hat)
    assert all(a.dtype == b.dtype and np.array_equal(a, np.asarray(b)) for a, b in
               zip(jax.tree.leaves(new_params), jax.tree.leaves(params)))
    new_state = unflatten_adam(state, m_hat, v_hat)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    halved = unflatten_adam(state, {k: x / 2 for k, x in m.items()}, v)
    adam = [s for s in jax.tree.leaves(halved, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)][0]
    np.testing.assert_allclose(adam.mu["dense"]["kernel"], m["dense/kernel"] / 2)
    assert int(adam.count) == 3


def test_manifest_edit_is_a_checksum_error(tmp_path):
    rng = np.random.default_rng(5)
    chain = ExcpChain(tmp_path)
    chain.append(1, *random_state(rng, SHAPES), meta={"opt_scalars": {"policy": [1, 1]}})
    path = os.path.join(tmp_path, "manifest.json")
    text = open(path).read()
    assert ExcpChain(tmp_path).meta(1) == {"opt_scalars": {"policy": [1, 1]}}
    edited = text.replace('"policy": [\n      1,', '"policy": [\n      7,')
    assert edited != text
    open(path, "w").write(edited)
    with pytest.raises(CheckpointError, match="manifest.*checksum"):
        ExcpChain(tmp_path)
    open(path, "w").write(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="manifest.*unreadable"):
        ExcpChain(tmp_path)


def test_leftover_temporary_files_removed_on_open(tmp_path):
    import subprocess
    import sys
    build_chain(tmp_path, n=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [f"step_00000200.excp.tmp{dead.pid}", f"manifest.json.tmp{dead.pid}"]
    live = f"step_00000300.excp.tmp{os.getpid()}"      # a writer of this process
    for name in stale + [live]:
        open(os.path.join(tmp_path, name), "wb").close()
    chain = ExcpChain(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(["manifest.json", "step_00000100.excp", live])
    assert chain.steps() == [100]
