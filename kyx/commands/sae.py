"""`kyx sae top-activations --workdir SAE_DIR [--latents 0,5,10-12] [--top 10] [--batches 20]
[--step N] [--split validation|train] [--json]`.

For a trained SAE run (configs/sae.py), streams its language model's data through the
model to the SAE's site, encodes the activations with the SAE, and prints for each
requested latent the ``--top`` contexts that activate it most, the activating token
marked «like this» (kyx/analysis/top_activations.py). Latents default to 0-7.
"""
from __future__ import annotations

import argparse
import json

from kyx.errors import ConfigError


def _parse(argv):
    parser = argparse.ArgumentParser(prog="kyx sae")
    parser.add_argument("action", choices=("top-activations",))
    parser.add_argument("--workdir", required=True, help="the SAE run's workdir")
    parser.add_argument("--latents", default="0-7", help="e.g. 3,17,40-45 (default 0-7)")
    parser.add_argument("--top", type=int, default=10, help="contexts per latent")
    parser.add_argument("--batches", type=int, default=20, help="model batches to scan")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per batch (default: the SAE's harvest.batch_size)")
    parser.add_argument("--step", type=int, default=-1, help="the SAE's checkpoint")
    parser.add_argument("--split", default="validation", choices=("validation", "train"))
    parser.add_argument("--context", type=int, default=16, help="tokens shown before")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (the last line of stdout)")
    return parser.parse_args(argv)


def parse_latents(text: str, n_latents: int) -> list[int]:
    """'3,17,40-45' -> [3, 17, 40, ..., 45], each checked against ``n_latents``."""
    out = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--latents {text!r}: expected indices and ranges like 3,17,40-45"
                          ) from None
    bad = [i for i in out if not 0 <= i < n_latents]
    if not out or bad:
        raise ConfigError(f"--latents {text!r}: the SAE has latents 0..{n_latents - 1}"
                          + (f"; out of range: {bad[:5]}" if bad else ""))
    return out


def main(argv) -> int:
    args = _parse(argv)
    import itertools


    import kyx
    from kyx import sharding
    from kyx.analysis import sae, sae_trainer
    from kyx.analysis.harvest import model_batches
    from kyx.analysis.top_activations import top_activations
    from kyx.checkpoint import workdir as workdir_lib

    cfg = workdir_lib.read_config(args.workdir)
    if cfg.get("trainer") != sae_trainer.NAME:
        raise ConfigError(f"{args.workdir} is a {cfg.get('trainer')!r} run, not an SAE run "
                          f"(trained with configs/sae.py)")
    scfg = sae_trainer.sae_config(cfg)
    latents = parse_latents(args.latents, scfg.n_latents)
    mesh = sharding.single_device_mesh()
    params = workdir_lib.load_params(args.workdir, sae.SaeParams(scfg), mesh,
                                     sharding.get_rules("dp"), args.step, sae_trainer.NAME)
    loaded = kyx.load(cfg.sae.model_workdir, sae_trainer.model_step(cfg))
    h = cfg.sae.harvest
    batches = model_batches(loaded, args.split, args.batch_size or h.batch_size, h.seq_len)
    with sharding.use_mesh(mesh, "dp"):
        found = top_activations(loaded, cfg.sae.site,
                                lambda act_nd: sae.forward(params, act_nd, scfg)[1], latents,
                                itertools.islice(batches, args.batches), top=args.top,
                                num_batches=args.batches, context=args.context)
    if args.json:
        print(json.dumps({str(lat): [vars(c) for c in ctxs] for lat, ctxs in found.items()}))
        return 0
    print(f"SAE {args.workdir} ({scfg.kind}, {scfg.n_latents} latents) at "
          f"{cfg.sae.site} of {cfg.sae.model_workdir}; {args.batches} {args.split} batches")
    for lat, ctxs in found.items():
        print(f"\nlatent {lat}: " + ("never active on the scanned tokens" if not ctxs or
                                     ctxs[0].value <= 0 else f"max {ctxs[0].value:.3f}"))
        for c in ctxs:
            if c.value > 0:
                print(f"  {c.value:8.3f}  {c.render()}")
    return 0
