"""Data mixtures: several corpora sampled by weight into one stream of training rows.

``data.mixture`` maps a label to a source: the data-config keys that differ for it
(``name``, ``path``, ``text_feature``, splits ...) plus its ``weight``::

    data.mixture = {"code": {"name": "stdlib", "weight": 0.8},
                    "notes": {"name": "text_files", "path": "~/notes", "weight": 0.2}}

Every source gets its own corpus and token cache; one tokenizer is trained on a text
sample drawn by the same weights. Global batch ``k`` assigns each of its rows a source
with ``default_rng([seed, k, MIX_STREAM]).choice(weights)``; source ``s``'s rows are then
the next rows of its own i.i.d. window stream (kyx/data/windows.py, seed derived from
``data.seed`` and the label). The state is the batch index plus one row counter per source,
so resume is exact and the stream does not depend on the number of processes.
Evaluation reports ``eval/<label>/loss`` per source besides the pooled ``eval/loss``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import Any

import ml_collections
import numpy as np

from kyx.data.corpus import Corpus, fingerprint, load_corpus
from kyx.data.windows import WindowIterator
from kyx.errors import ConfigError, DataError

MIX_STREAM = 0x4D4958  # "MIX": the rng stream of the per-row source choice


@dataclasses.dataclass
class Mixture:
    """The corpora of a mixture, their normalised weights and per-source data configs."""

    corpora: dict[str, Corpus]
    weights: dict[str, float]
    configs: dict[str, ml_collections.ConfigDict]

    @property
    def labels(self) -> list[str]:
        return list(self.corpora)

    @property
    def fingerprint(self) -> str:
        return fingerprint([[k, self.corpora[k].fingerprint, self.weights[k]]
                            for k in self.labels])

    @property
    def name(self) -> str:
        return "mixture(" + ", ".join(f"{k}={self.weights[k]:.3g}" for k in self.labels) + ")"

    @property
    def stats(self) -> dict[str, Any]:
        return {k: dict(c.stats) for k, c in self.corpora.items()}


def source_configs(cfg) -> dict[str, tuple[ml_collections.ConfigDict, float]]:
    """{label: (data config of the source, weight)} of ``cfg.mixture`` ({} without one)."""
    mixture = cfg.get("mixture") or {}
    out = {}
    for label, entry in dict(mixture).items():
        entry = dict(entry)
        if "weight" not in entry:
            raise ConfigError(f"data.mixture.{label} needs a weight, e.g. "
                              f"--config.data.mixture.{label}.weight=0.5")
        weight = entry.pop("weight")
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"data.mixture.{label}.weight must be a number > 0, got {weight!r}")
        source = ml_collections.ConfigDict(cfg.to_dict())
        source.mixture = ml_collections.ConfigDict()
        for key, value in entry.items():
            if key not in source or key in ("mixture", "seq_len", "batch_size", "seed",
                                            "tokenizer", "sampling"):
                raise ConfigError(
                    f"data.mixture.{label}.{key} is not a per-source setting; a source may set "
                    "name, path, text_feature, train_split, eval_split, val_fraction, "
                    "min_val_files, max_files, data_dir and dedup")
            source[key] = value
        out[label] = (source, float(weight))
    return out


def load(cfg) -> Mixture:
    """Builds (once) or loads every source's corpus."""
    sources = source_configs(cfg)
    if len(sources) < 2:
        raise ConfigError(f"data.mixture needs at least two sources, got {sorted(sources)}; "
                          "for one corpus set data.name / data.path instead")
    total = sum(w for _, w in sources.values())
    return Mixture(corpora={k: load_corpus(c) for k, (c, _) in sources.items()},
                   weights={k: w / total for k, (_, w) in sources.items()},
                   configs={k: c for k, (c, _) in sources.items()})


def sample_texts(texts: dict[str, Any], weights: dict[str, float], seed: int = 0):
    """Texts from several iterators interleaved by weight (a tokenizer's training sample);
    an exhausted source drops out and the others go on."""
    rng = np.random.default_rng([seed, MIX_STREAM])
    live = dict(texts)
    while live:
        labels = list(live)
        p = np.array([weights[k] for k in labels])
        label = labels[rng.choice(len(labels), p=p / p.sum())]
        try:
            yield next(live[label])
        except StopIteration:
            del live[label]


def source_seed(seed: int, label: str) -> int:
    """The window-order seed of one source: independent streams for different labels."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:4], "little")


class MixtureIterator:
    """Training batches drawn from several window streams by weight; exact resume."""

    def __init__(self, streams: dict[str, WindowIterator], weights: dict[str, float],
                 batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
        self.streams, self.labels = streams, list(streams)
        self.p = np.array([weights[k] for k in self.labels])
        self.p = self.p / self.p.sum()
        self.batch_size, self.seed = batch_size, seed
        local = batch_size // process_count
        self.local_rows = (process_index * local, (process_index + 1) * local)
        self.batch = 0                                # next global batch
        self.rows = {k: 0 for k in self.labels}       # global rows taken from each source

    def __iter__(self):
        return self

    def assignment(self, batch: int) -> np.ndarray:
        """The source index of every row of global batch ``batch``."""
        rng = np.random.default_rng([self.seed, batch, MIX_STREAM])
        return rng.choice(len(self.labels), size=self.batch_size, p=self.p)

    def __next__(self) -> dict[str, np.ndarray]:
        source = self.assignment(self.batch)
        a, b = self.local_rows
        windows = []
        for i in range(a, b):
            s = int(source[i])
            stream = self.streams[self.labels[s]]
            row = self.rows[self.labels[s]] + int(np.sum(source[:i] == s))
            windows.append((stream, stream.window(row)))
        parts = [stream.rows([w]) for stream, w in windows]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        for s, label in enumerate(self.labels):
            self.rows[label] += int(np.sum(source == s))
        self.batch += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"sampling": "mixture", "batch": self.batch, "rows": dict(self.rows),
                "num_windows": {k: s.num_windows for k, s in self.streams.items()},
                "weights": self.p.tolist(), "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        expected = {k: s.num_windows for k, s in self.streams.items()}
        if (state.get("sampling") != "mixture" or state.get("num_windows") != expected
                or not np.allclose(state.get("weights", []), self.p)):
            raise DataError(
                f"The checkpoint's data state {state} is not of this mixture (sources "
                f"{expected} windows, weights {self.p.tolist()}): data.mixture, data.seq_len or "
                "a corpus changed since it was saved.")
        self.batch = int(state["batch"])
        self.rows = {k: int(v) for k, v in state["rows"].items()}

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

    @property
    def stats(self) -> dict[str, Any]:
        return {k: s.stats for k, s in self.streams.items()}


def chain_batches(make_iterators):
    """One pass over several finite batch iterators (made lazily), one after the other."""
    return itertools.chain.from_iterable(make() for make in make_iterators)
