"""AND-OR interaction order profile at every saved checkpoint of a run (two-phase dynamics).

Steps are the union of the run's full Orbax checkpoints and its ExCP chain
(kyx/checkpoint/excp*.py): a step with a full checkpoint is read from it, any other
chain step is reconstructed from the chain (lossy by ExCP's design: pruned residuals,
4-bit weights). The same inputs (interactions_samples.pick_samples, from the newest
checkpoint's run) are used at every step. Per step and sample: the 2^n masked log-odds
(interactions_model), the learned AND-OR split (interactions_fit), its universal-matching
error, and the order profile (interactions_order), averaged over samples.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from kyx import sharding
from kyx.analysis import interactions_fit, interactions_math, interactions_model
from kyx.analysis import interactions_order, interactions_samples
from kyx.checkpoint import excp_archive
from kyx.checkpoint import workdir as workdir_lib
from kyx.checkpoint.excp import ExcpChain
from kyx.checkpoint.excp_optax import flat_to_tree
from kyx.errors import CheckpointError, KyxError
from kyx.fileio import as_path
from kyx.model.params import param_shardings

POLICY = "policy"


@dataclasses.dataclass(frozen=True)
class Options:
    samples: int = 8
    players: int = 8
    seed: int = 0
    window: int = 32
    baseline: str = "eos"
    fit: interactions_fit.FitOptions = interactions_fit.FitOptions()


def checkpoint_sources(workdir: str) -> dict[int, str]:
    """step -> "full" | "excp" for every saved step of the run (full preferred)."""
    if not (as_path(workdir) / "config.json").exists():
        raise KyxError(f"{workdir!r} is not a kyx workdir (no config.json)")
    out = {s: "excp" for s in _chain(workdir).steps()} if _has_chain(workdir) else {}
    out.update({s: "full" for s in workdir_lib.checkpoint_steps(workdir)})
    if not out:
        raise KyxError(f"{workdir!r} holds no checkpoint (neither under checkpoints/ nor an "
                       "ExCP chain under excp/); train it first")
    return dict(sorted(out.items()))


def _has_chain(workdir: str) -> bool:
    return os.path.exists(os.path.join(excp_archive.chain_dir(workdir), "manifest.json"))


def _chain(workdir: str) -> ExcpChain:
    return ExcpChain(excp_archive.chain_dir(workdir))


def step_params(loaded, workdir: str, step: int, kind: str):
    """The ``policy`` params of ``step``: from its full checkpoint or the ExCP chain."""
    mesh, rules = sharding.single_device_mesh(), sharding.get_rules("dp")
    if kind == "full":
        return workdir_lib.load_params(workdir, loaded.model, mesh, rules, step)
    w, _, _ = _chain(workdir).reconstruct(step, moments=False)
    head = POLICY + "/"
    flat = {k[len(head):]: x for k, x in w.items() if k.startswith(head)}
    shardings, abstract = param_shardings(loaded.model, mesh, rules)
    try:
        tree = flat_to_tree(abstract, flat)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"ExCP step {step} of {workdir} does not hold this run's "
                              f"{POLICY} params ({type(e).__name__}: {e})") from e
    return jax.device_put(tree, shardings)


def evaluate(loaded, params, samples, options: Options, baseline_id: int) -> dict:
    """Order profile + diagnostics of ``params`` on ``samples``; the masked forwards run
    data-parallel over every device (params replicated, the 2^n masks sharded)."""
    mesh = sharding.make_mesh({"data": jax.device_count()})
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    base = interactions_model.baseline_embedding(loaded.model, params, options.baseline,
                                                 baseline_id)
    v = np.stack([interactions_model.masked_values(loaded.model, params, s, base, mesh=mesh)
                  for s in samples])
    dec = interactions_fit.fit(v, options.fit)
    errors = [interactions_math.universal_matching_error(dec.v[i] + dec.q[i], dec.i_and[i],
                                                         dec.i_or[i]) for i in range(len(v))]
    prof = interactions_order.strength_by_order(dec.i_and, dec.i_or)
    return {"orders": prof.to_dict(),
            "v_full": [float(x) for x in v[:, -1]], "v_empty": [float(x) for x in v[:, 0]],
            "l1_even_split": float(dec.loss_start.mean()), "l1": float(dec.loss_end.mean()),
            "matching_error": float(max(errors)),
            "max_abs_q": float(np.abs(dec.q).max())}


def dynamics(workdir: str, options: Options, log=print) -> dict:
    """The whole study: per-step order profiles (JSON-ready dict)."""
    from kyx import api

    if options.players > interactions_math.MAX_PLAYERS or options.players < 1:
        raise KyxError(f"--players must be 1..{interactions_math.MAX_PLAYERS} (2^n forward "
                       f"passes per input); got {options.players}")
    sources = checkpoint_sources(workdir)
    if "full" not in sources.values():
        raise KyxError(f"{workdir!r} has no full checkpoint to read its model from")
    loaded = api.load(workdir)
    samples = interactions_samples.pick_samples(loaded, options.samples, options.players,
                                                options.seed, options.window)
    baseline_id = loaded.tokenizer.pad_id
    steps = {}
    for step, kind in sources.items():
        t0 = time.time()
        params = step_params(loaded, workdir, step, kind)
        steps[step] = {"source": kind, **evaluate(loaded, params, samples, options,
                                                  baseline_id)}
        log(f"step {step:>7} ({kind}) done in {time.time() - t0:.1f}s: matching error "
            f"{steps[step]['matching_error']:.2e}")
    tok = loaded.tokenizer
    return {
        "workdir": workdir, "options": {**dataclasses.asdict(options)},
        "threshold": interactions_order.THRESHOLD,
        "samples": [{"context": tok.decode([int(t) for t in s.tokens_t]),
                     "players": [tok.decode([int(s.tokens_t[p])]) for p in s.players],
                     "player_positions": list(s.players),
                     "target": tok.decode([s.target])} for s in samples],
        "steps": {str(k): v for k, v in steps.items()},
    }
