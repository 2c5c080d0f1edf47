"""tfds builders for post-training records (array_record, cached under ``data_dir``).

* ``kyx_jsonl_records``: local JSONL files (``records.path``; a file or a glob) of one
  record kind (kyx/data/records.py). Malformed lines are counted by reason and skipped;
  the counts and the first few ``file:line`` locations per reason are stored in the
  dataset metadata (``Records.stats``) and logged. Validation: ``records.eval_path`` or,
  without it, the records whose content hash falls below ``records.val_fraction``.
* ``kyx_mined_records``: the embedded default datasets, mined (kyx/data/mining.py) from
  the corpus named by the data config (the standard library by default). Train records
  come from the corpus's train files and validation records from its validation files,
  so held-out functions were never seen in pretraining. Capped by ``records.max_train``
  and ``records.max_eval``, taking files in path-hash order.

Like the corpora, each distinct input (files, sizes, mtimes, options, corpus) gets its own
config name, so a second call reuses the prepared files.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kyx.data import corpus as corpus_lib
from kyx.data import mining, records
from kyx.errors import ConfigError, DataError
from kyx.logs import get_logger

log = get_logger(__name__)
_MAX_LISTED = 20  # locations of skipped records kept in metadata, per reason
RECORDS_FORMAT = 2  # stored fields; 2: + history (multi-turn). Part of each config name.


def features(kind: str) -> tfds.features.FeaturesDict:
    """Fields of a normalised record (kyx/data/records.py); ``history`` (earlier turns of
    a conversation) is stored as JSON text."""
    text = tfds.features.Text
    common = {"prompt": text(), "system": text(), "history": text()}
    if kind == "sft":
        return tfds.features.FeaturesDict({**common, "response": text(),
                                           "negatives": tfds.features.Sequence(text())})
    if kind == "preference":
        return tfds.features.FeaturesDict({**common, "chosen": text(), "rejected": text(),
                                           "strength": np.int32})
    return tfds.features.FeaturesDict({**common, "response": text(), "label": np.int32})


@dataclasses.dataclass(eq=False)
class RecordsConfig(tfds.core.BuilderConfig):
    kind: str = "sft"
    path: str = ""
    eval_path: str = ""
    val_fraction: float = 0.05
    max_train: int = 0
    max_eval: int = 0
    max_prompt_chars: int = 200
    max_response_lines: int = 4
    max_response_chars: int = 200


class _RecordsBuilder(corpus_lib.LocalBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=features(self.builder_config.kind),
                                     metadata=tfds.core.MetadataDict())

    def _generate_examples(self, rows: list[dict]):
        for i, row in enumerate(rows):
            yield i, {**row, "history": json.dumps(row["history"], ensure_ascii=False)}


class KyxJsonlRecords(_RecordsBuilder):
    """Post-training records from local JSONL files."""

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        stats = {"records_seen": 0, "records_kept": 0, "skipped": {}, "skipped_at": {}}
        train = _read_jsonl(cfg.kind, cfg.path, stats)
        if cfg.eval_path:
            val = _read_jsonl(cfg.kind, cfg.eval_path, stats)
        else:
            train, val = _hash_split(train, cfg.val_fraction)
        stats.update(train_records=len(train), validation_records=len(val))
        self.info.metadata.update(stats)
        if stats["skipped"]:
            log.warning("%s: skipped %d malformed records %s (e.g. %s)", cfg.path,
                        sum(stats["skipped"].values()), stats["skipped"],
                        next(iter(stats["skipped_at"].values()))[:3])
        if not train:
            raise DataError(f"no valid {cfg.kind} records in {cfg.path!r} (skipped: "
                            f"{stats['skipped']}); see kyx/data/records.py for the format")
        return {"train": self._generate_examples(train),
                "validation": self._generate_examples(val)}


class KyxMinedRecords(_RecordsBuilder):
    """Post-training records mined from a Python source corpus (default: the stdlib)."""

    def __init__(self, *, corpus: corpus_lib.Corpus | None = None, **kwargs):
        self._corpus = corpus
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        out, stats = {}, {}
        for split, cap in (("train", cfg.max_train), ("validation", cfg.max_eval)):
            fns = mine_split(self._corpus, split, cap, cfg)
            if len(fns) < 2:
                raise DataError(f"mined only {len(fns)} documented functions from the "
                                f"{split} split of corpus {self._corpus.name!r}; use a larger "
                                f"corpus of Python files")
            out[split] = [records.normalize(cfg.kind, mining.view(cfg.kind, fns, i))[0]
                          for i in range(len(fns))]
            stats[f"{split}_records"] = len(fns)
        self.info.metadata.update(stats)
        return {s: self._generate_examples(rows) for s, rows in out.items()}


def mine_split(corpus, split: str, cap: int, cfg) -> list[mining.Function]:
    """Documented functions of a corpus split (files in path-hash order, up to ``cap``
    functions; 0 = all); ``cfg`` has the ``max_prompt_chars`` / ``max_response_*`` caps."""
    source = corpus.source(split)
    docs = []
    for i in range(len(source)):
        rec = source[i]
        path = _text(rec.get("path", str(i)))
        docs.append((corpus_lib.path_hash(path), path, i))
    fns: list[mining.Function] = []
    for _, path, i in sorted(docs):
        text = _text(source[i][corpus.text_feature])
        fns += mining.mine_source(text, path, cfg.max_prompt_chars, cfg.max_response_lines,
                                  cfg.max_response_chars)
        if cap and len(fns) >= cap:
            return fns[:cap]
    return fns


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _files(pattern: str) -> list[str]:
    path = os.path.expanduser(pattern)
    files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise DataError(f"JSONL path {pattern!r} matched no files")
    return files


def _read_jsonl(kind: str, pattern: str, stats: dict) -> list[dict]:
    rows = []
    for name in _files(pattern):
        with open(name, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                stats["records_seen"] += 1
                try:
                    rec, reason = records.parse_line(kind, raw.decode("utf-8"))
                except UnicodeDecodeError:
                    rec, reason = None, "invalid_utf8"
                if rec is None:
                    stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
                    at = stats["skipped_at"].setdefault(reason, [])
                    if len(at) < _MAX_LISTED:
                        at.append(f"{os.path.basename(name)}:{n}")
                    continue
                stats["records_kept"] += 1
                rows.append(rec)
    return rows


def _hash_split(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.records.val_fraction must be in [0, 1), got {val_fraction}")
    keyed = [(_record_hash(r), r) for r in rows]
    val = [r for h, r in keyed if h < val_fraction]
    if val_fraction > 0 and not val and len(rows) >= 2:  # at least one held-out record
        lowest = min(range(len(keyed)), key=lambda i: keyed[i][0])
        val = [rows[lowest]]
    ids = {id(r) for r in val}
    return [r for r in rows if id(r) not in ids], val


def _record_hash(rec: dict) -> float:
    digest = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclasses.dataclass
class Records:
    """Prepared records of one kind; ``source(split)[i]`` is a normalised record dict."""
    kind: str
    builder: Any
    stats: dict
    fingerprint: str

    def source(self, split: str) -> "RecordSource":
        return RecordSource(self.builder.as_data_source(split=split), self.kind)

    def __len__(self) -> int:
        return self.builder.info.splits["train"].num_examples


class RecordSource:
    """Random access to decoded records (str fields, list negatives, int scalars)."""

    def __init__(self, source, kind: str):
        self._source, self.kind = source, kind

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        raw = self._source[int(i)]
        out = {}
        for key, value in raw.items():
            if key == "negatives":
                out[key] = [_text(v) for v in value]
            elif key == "history":
                out[key] = json.loads(_text(value) or "[]")
            elif key in ("strength", "label"):
                out[key] = int(value)
            else:
                out[key] = _text(value)
        return out


def load_records(data_cfg, kind: str, corpus: corpus_lib.Corpus | None = None) -> Records:
    """Build (once) or load the records named by ``data_cfg.records`` for ``kind``."""
    records.check_kind(kind)
    rc = data_cfg.records
    data_dir = data_cfg.data_dir or corpus_lib.default_data_dir()
    opts = dict(kind=kind, max_train=rc.max_train, max_eval=rc.max_eval,
                max_prompt_chars=rc.max_prompt_chars, max_response_lines=rc.max_response_lines,
                max_response_chars=rc.max_response_chars)
    if rc.source == "jsonl":
        if not rc.path:
            raise ConfigError("data.records.source='jsonl' needs data.records.path "
                              "(a .jsonl file or a glob)")
        files = _files(rc.path) + (_files(rc.eval_path) if rc.eval_path else [])
        stat = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        key = [stat, rc.eval_path != "", rc.val_fraction, opts, records.KINDS,
               RECORDS_FORMAT]
        cls, kwargs = KyxJsonlRecords, {}
        config = RecordsConfig(name=f"{kind}_{corpus_lib.fingerprint(key)}", path=rc.path,
                               eval_path=rc.eval_path, val_fraction=rc.val_fraction, **opts)
    elif rc.source == "mined":
        corpus = corpus or corpus_lib.load_corpus(data_cfg)
        key = [corpus.fingerprint, opts, mining.MINING_VERSION, RECORDS_FORMAT]
        cls, kwargs = KyxMinedRecords, {"corpus": corpus}
        config = RecordsConfig(name=f"{kind}_{corpus_lib.fingerprint(key)}", **opts)
    else:
        raise ConfigError(f"data.records.source must be 'mined' or 'jsonl', got {rc.source!r}")
    builder = corpus_lib.make_builder(cls, config=config, data_dir=data_dir,
                                      file_format="array_record", **kwargs)
    corpus_lib.prepare(builder, data_dir, f"{kind} records")
    stats = dict(builder.info.metadata.items())
    return Records(kind=kind, builder=builder, stats=stats,
                   fingerprint=f"{builder.info.full_name}")
