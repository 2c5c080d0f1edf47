"""Rejection sampling (Llama 2 / 3): N responses per prompt from a policy, scored, the best
kept (optionally only above a threshold) as SFT records that configs/sft.py reads
(``--config.data.records.source=jsonl --config.data.records.path=FILE``).

    kyx rejection-sample --policy runs/sft --prompts mined --n 8 --out best.jsonl \\
        [--reward 'parses:1,rm:1' --reward-model runs/rm --threshold 0.5]

Prompts: a JSONL file of {"prompt", optional "system"} (malformed lines are counted and
skipped), or ``mined``: the prompts of the embedded SFT records (train split).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np

from kyx.data.records import parse_prompt_line
from kyx.errors import DataError
from kyx.fileio import atomic_write
from kyx.logs import get_logger

log = get_logger(__name__)


def read_prompts(path: str, limit: int = 0) -> list[dict]:
    """{"prompt", "system"} records of a JSONL file; malformed lines are reported, skipped."""
    out, skipped = [], {}
    if not os.path.isfile(path):
        raise DataError(f"prompts file {path!r} does not exist (JSONL of {{\"prompt\": ...}}, "
                        "or 'mined' for the embedded prompts)")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # bad bytes: skipped
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record, reason = parse_prompt_line(line)
            if reason:
                skipped.setdefault(reason, n)
                continue
            out.append(record)
            if limit and len(out) == limit:
                break
    if skipped:
        log.warning("%s: skipped malformed lines (first line per reason: %s)", path, skipped)
    if not out:
        raise DataError(f"{path} holds no usable prompt ({{\"prompt\": ...}} per line)")
    return out


def mined_prompts(data_cfg, split: str = "train", limit: int = 0) -> list[dict]:
    """The prompts of the embedded SFT records (kyx/data/mining.py) of ``split``."""
    from kyx.data import preference_corpus
    from kyx.data.corpus import load_corpus

    records = preference_corpus.load_records(data_cfg, "sft", load_corpus(data_cfg))
    source = records.source(split)
    n = len(source) if not limit else min(limit, len(source))
    return [{"prompt": source[i]["prompt"], "system": source[i].get("system", "")}
            for i in range(n)]


def best_of(scores: np.ndarray) -> int:
    """The argmax (the first one on ties)."""
    return int(np.argmax(scores))


def score_candidates(prompts: list[dict], responses: list[list[str]],
                     reward: Callable[[Sequence[str], Sequence[str]], object]) -> list[dict]:
    """[{prompt, system, responses, scores}] with ``reward(prompts, responses)`` -> scores
    (or (scores, parts)) over the flattened samples."""
    flat_p = [p["prompt"] for p, rs in zip(prompts, responses) for _ in rs]
    flat_r = [r for rs in responses for r in rs]
    out = reward(flat_p, flat_r)
    total = np.asarray(out[0] if isinstance(out, tuple) else out, np.float64)
    cands, at = [], 0
    for p, rs in zip(prompts, responses):
        cands.append({**p, "responses": list(rs), "scores": total[at:at + len(rs)].tolist()})
        at += len(rs)
    return cands


def usable_scores(candidate: dict) -> np.ndarray:
    """Scores with empty responses (not a record any trainer reads) at -inf."""
    return np.asarray([s if r.strip() else -np.inf for r, s in
                       zip(candidate["responses"], candidate["scores"])], np.float64)


def keep_best(candidates: list[dict], threshold: float | None = None) -> list[dict]:
    """SFT records of each prompt's best non-empty response (score >= threshold, when
    given)."""
    kept = []
    for c in candidates:
        scores = usable_scores(c)
        j = best_of(scores)
        if np.isfinite(scores[j]) and (threshold is None or scores[j] >= threshold):
            kept.append({"prompt": c["prompt"], "system": c.get("system", ""),
                         "response": c["responses"][j], "score": c["scores"][j]})
    return kept


def write_jsonl(path: str, records: list[dict]) -> str:
    """All records at once, atomically (a killed run leaves the old file or none)."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                      for r in records))


def rejection_sample(policy, prompts: list[dict], n: int, reward, *, seed: int = 0,
                     threshold: float | None = None, batch_prompts: int = 16):
    """(kept SFT records, all candidates): ``policy`` (kyx/alignment/policy.py) samples
    ``n`` responses per prompt, ``reward`` scores them, the argmax is kept."""
    responses = policy.sample(prompts, n, seed, batch_prompts)
    candidates = score_candidates(prompts, responses, reward)
    return keep_best(candidates, threshold), candidates
