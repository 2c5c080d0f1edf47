"""A round's evaluation against round 0 on held-out prompts (one sample per prompt, the same
sampling seed for both policies):

* ``reward`` and ``reward/<term>``: the round's reward mix on its own samples;
* ``win/<name>``: the share of prompts where the round's sample scores above round 0's
  under ``<name>`` (a reward term: ``parses``, ``rm`` ...; ties count ½);
* ``win/judge``: the AI judge's order-symmetrised preference for the round's sample;
* ``kl``: Σ_t log pi_k − log pi_0 over the round's samples (KL(pi_k ‖ pi_0) per response);
* ``response_len`` and, with an SFT trainer, ``sft_eval_loss`` on held-out SFT records.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def win_rate(scores: np.ndarray, base: np.ndarray) -> float:
    """Mean of 1[s > s0] + ½·1[s = s0]."""
    scores, base = np.asarray(scores, np.float64), np.asarray(base, np.float64)
    return float(np.mean((scores > base) + 0.5 * (scores == base)))


def evaluate(policy, base, prompts: list[dict], *, seed: int, reward,
             win_by: dict[str, Callable], judge=None,
             sft_eval: Callable[[str], float] | None = None) -> dict:
    texts = [p["prompt"] for p in prompts]
    responses, raw = policy.sample(prompts, 1, seed, with_tokens=True)
    ours = [r[0] for r in responses]
    theirs = ours if base is policy else [r[0] for r in base.sample(prompts, 1, seed)]
    total, parts = reward(texts, ours)
    out = {"reward": float(np.mean(total)),
           **{f"reward/{k}": float(np.mean(v)) for k, v in parts.items()},
           "response_len": float(np.mean([len(r) for r in ours])),
           "kl": 0.0 if base is policy else float(np.mean(policy.kl_to(base, raw)))}
    for name, scorer in win_by.items():
        s = scorer(texts, ours)
        s0 = s if base is policy else scorer(texts, theirs)
        out[f"win/{name}"] = win_rate(s[0] if isinstance(s, tuple) else s,
                                      s0[0] if isinstance(s0, tuple) else s0)
    if judge is not None:
        out["win/judge"] = float(np.mean(judge.prefer(texts, ours, theirs)))
    if sft_eval is not None:
        out["sft_eval_loss"] = float(sft_eval(policy.source))
    return out
