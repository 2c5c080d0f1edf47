"""Preference pairs for DPO or reward-model training, from scored samples or an AI judge.

* ``best_vs_worst``: per prompt, the best-scored response is chosen and the worst rejected
  when their scores differ by more than ``min_margin`` (a reward model, verifiers, or any
  mix: RLHF / verifier feedback);
* ``judged``: an AI judge compares two responses per prompt in both orders
  (kyx/rewards/pairwise.py: RLAIF); the preferred one is chosen when its symmetrised
  preference P exceeds ½ + ``min_margin`` / 2; the judge may be the policy itself.

Records have the ``preference`` format (kyx/data/records.py): prompt, system, chosen,
rejected, plus ``margin`` (score difference, or 2P − 1) for inspection.
"""
from __future__ import annotations

import numpy as np

from kyx.alignment.rejection import usable_scores


def best_vs_worst(candidates: list[dict], min_margin: float = 0.0) -> list[dict]:
    pairs = []
    for c in candidates:
        scores = usable_scores(c)
        real = np.isfinite(scores)
        if real.sum() < 2:
            continue
        hi = int(np.argmax(np.where(real, scores, -np.inf)))
        lo = int(np.argmin(np.where(real, scores, np.inf)))
        chosen, rejected = c["responses"][hi], c["responses"][lo]
        margin = float(scores[hi] - scores[lo])
        if margin > min_margin and chosen != rejected:
            pairs.append({"prompt": c["prompt"], "system": c.get("system", ""),
                          "chosen": chosen, "rejected": rejected, "margin": margin})
    return pairs


def judged(candidates: list[dict], judge, min_margin: float = 0.0) -> list[dict]:
    """Pairs from the first two distinct non-empty responses of each prompt, judged both ways."""
    firsts, seconds, kept = [], [], []
    for c in candidates:
        distinct = list(dict.fromkeys(r for r in c["responses"] if r.strip()))
        if len(distinct) >= 2:
            kept.append(c)
            firsts.append(distinct[0])
            seconds.append(distinct[1])
    if not kept:
        return []
    p = judge.prefer([c["prompt"] for c in kept], firsts, seconds)
    pairs = []
    for c, a, b, pa in zip(kept, firsts, seconds, p):
        margin = abs(2.0 * float(pa) - 1.0)
        if margin > min_margin:
            chosen, rejected = (a, b) if pa > 0.5 else (b, a)
            pairs.append({"prompt": c["prompt"], "system": c.get("system", ""),
                          "chosen": chosen, "rejected": rejected, "margin": margin})
    return pairs
