"""Inputs for AND-OR interactions from a run's own validation data, chosen deterministically.

A candidate is a position i of a validation row whose window of ``window`` tokens ending
at i lies inside one document (one segment id, real tokens) and whose next token (the
target) is a real, non-special, non-whitespace token; each row gives at most one, its
last. Players are the n context tokens nearest before the target that are neither
special (BOS / EOS / pad) nor whitespace only. The first ``pool`` candidates of the
validation pass (in order) are collected and ``samples`` of them drawn without
replacement by ``numpy.random.default_rng(seed)``: the same run, seed and settings always
give the same inputs.
"""
from __future__ import annotations

import numpy as np

from kyx.analysis import harvest
from kyx.analysis.interactions_model import Sample, nearest_players
from kyx.errors import KyxError


def _eligible(tokenizer, ids) -> np.ndarray:
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    return np.array([int(t) not in special and tokenizer.decode([int(t)]).strip() != ""
                     for t in ids], bool)


def row_candidates(batch: dict, tokenizer, window: int, players: int):
    """Samples of one batch (numpy dict of tokens, segment_ids, positions, targets,
    loss_mask): at most one per row, its last candidate position (most context)."""
    tokens, segs, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
    targets, mask = batch["targets"], batch["loss_mask"]
    for r in range(tokens.shape[0]):
        for i in range(tokens.shape[1] - 1, window - 2, -1):
            lo = i - window + 1
            if not mask[r, i] or segs[r, i] == 0 or np.any(segs[r, lo:i + 1] != segs[r, i]):
                continue
            if not _eligible(tokenizer, [targets[r, i]])[0]:
                continue
            ok = _eligible(tokenizer, tokens[r, lo:i + 1])
            if ok.sum() < players:
                continue
            yield Sample(np.asarray(tokens[r, lo:i + 1], np.int32),
                         np.asarray(pos[r, lo:i + 1], np.int32), int(targets[r, i]),
                         nearest_players(ok, players))
            break


def pick_samples(loaded, samples: int, players: int, seed: int = 0, window: int = 32,
                 pool: int = 128) -> list[Sample]:
    """``samples`` inputs of the loaded run's validation data (see the module doc)."""
    seq_len = int(loaded.config.data.seq_len)
    if window > seq_len:
        raise KyxError(f"--window {window} is longer than the run's rows ({seq_len} tokens)")
    found: list[Sample] = []
    for batch in harvest.model_batches(loaded, "validation", 8, seq_len, seed=0):
        batch = {k: np.asarray(v) for k, v in batch.items()}
        found.extend(row_candidates(batch, loaded.tokenizer, window, players))
        if len(found) >= pool:
            break
    found = found[:pool]
    if len(found) < samples:
        raise KyxError(f"the validation data has only {len(found)} inputs with {players} "
                       f"player tokens in a {window}-token window; ask for fewer --samples "
                       "or --players")
    pick = np.random.default_rng(seed).choice(len(found), size=samples, replace=False)
    return [found[i] for i in sorted(pick)]
