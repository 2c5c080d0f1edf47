"""Grain pipelines for post-training: chat-formatted SFT rows, preference pairs, KTO rows.

Records (kyx/data/preference_corpus.py) are formatted with the chat template
(kyx/data/chat.py: kyx's own or the model's, ``records.chat_template``) and truncated to
``seq_len`` (prompt text from the left, then responses from the right; counted in
``stats['truncated']``). Multi-turn records (``history``) keep their earlier turns: SFT
learns every assistant turn, pairs and KTO rows compare only the final one.

**SFT** (``make_sft_iterator``): positive sequences (one per record) and negative
sequences (one per negative response) go to two streams over the same shuffled records,
each packed whole into rows of ``seq_len`` (grain first-fit packing; never split across
rows). A batch holds ``batch_size`` rows of each, so the positive rows are the same with
or without negative feedback::

  tokens, targets, segment_ids, positions   positive rows, as in kyx/data/pipeline.py
  loss_mask       1.0 where the target is a response token (end of turn included)
  neg_tokens, neg_targets, neg_segment_ids, neg_positions   negative rows
  neg_mask        1.0 where the target is a negative response token at or after the
                  first token where it diverges from the positive, formatting excluded
  neg_index       k on the k-th negative of a record (1-based), 0 on padding

**Pairs / KTO** (``make_pair_iterator``): one example per row, right-padded. For each
sequence name (preference: ``chosen``, ``rejected``; feedback: ``response`` and ``kl``,
the latter pairing this prompt with the response of record ``(i + 1) mod N``, KTO's
mismatched pair fixed per dataset so reference log-probs can be precomputed)::

  {name}_tokens, {name}_targets, {name}_segment_ids   [B, T] int32 (segment 1, pad 0)
  {name}_loss_mask     [B, T] target is a response token
  {name}_format_mask   [B, T] target is a formatting token (header / end of turn)
  strength | label     [B] int32 (preference strength 0..3 or -1; feedback 1 desirable)
  weight               [B] float32 1 for real rows, 0 for rows padding the last eval batch
  ref_{name}_logps     [B] float32, when a precomputed reference table is given

Train iterators shuffle (seeded, a new order each epoch) and repeat; eval iterators make
one ordered pass. Iterators are checkpointable (``get_state`` / ``set_state``).
"""
from __future__ import annotations

import threading

import grain
import ml_collections
import numpy as np

from kyx import axes as ax
from kyx.data import chat, pipeline
from kyx.errors import ConfigError, DataError

SEQUENCES = {"preference": ("chosen", "rejected"), "feedback": ("response", "kl")}
SCALARS = {"preference": "strength", "feedback": "label"}
MAX_NEGATIVES = 4  # negatives per SFT record used at most


def records_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "source": "mined",         # "mined": from the corpus named by data.name; "jsonl"
        "path": "",                # jsonl: a file or a glob
        "eval_path": "",           # jsonl: validation file; '' = split by val_fraction
        "val_fraction": 0.05,
        "max_train": 4000,         # mined: cap on train / validation records (0 = all)
        "max_eval": 256,
        "max_prompt_chars": 200,   # mined: prompt = signature + docstring summary
        "max_response_lines": 4,   # mined: response = first lines of the body
        "max_response_chars": 200,
        "system": "",              # system prompt for records without one
        "chat_template": "auto",   # kyx | hf (the model's own Jinja template) | auto: hf
                                   # when the tokenizer has its own template, else kyx
        "max_negatives": 0,        # SFT: use at most this many negatives per record
                                   # (0 = all, up to 4; mined: repetition loop, foreign lines)
    })


def default_config() -> ml_collections.ConfigDict:
    """The pretraining data config (corpus, tokenizer, batch) plus ``records``."""
    c = pipeline.default_config()
    c.records = records_config()
    return c


class Stats:
    """Sequences truncated to fit ``seq_len`` (exact with worker_count=0)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = {"sequences": 0, "truncated": 0}

    def add(self, n: int, truncated: int) -> None:
        with self._lock:
            self.counts["sequences"] += n
            self.counts["truncated"] += truncated


class RecordIterator(grain.DatasetIterator):
    def __init__(self, parent, stats: Stats):
        super().__init__(parent)
        self._stats = stats

    def __next__(self):
        return next(self._parent)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)

    @property
    def stats(self) -> dict:
        return dict(self._stats.counts)


def _system(rec: dict, default: str) -> str:
    return rec.get("system") or default


# ----------------------------------------------------------------------------- SFT
class SftElements(grain.experimental.FlatMapTransform):
    """Record -> its positive sequence, or (``negative=True``) its negative sequences."""

    def __init__(self, template: chat.Template, seq_len: int, negative: bool,
                 max_negatives: int, system: str, stats: Stats, transform=None):
        self.template, self.seq_len, self.negative = template, seq_len, negative
        self.transform = transform  # positive element -> element (e.g. kyx/train/lud.py)
        self.max_negatives = min(max_negatives or MAX_NEGATIVES, MAX_NEGATIVES)
        self.system, self.stats, self.max_fan_out = system, stats, MAX_NEGATIVES

    def flat_map(self, rec):
        negs = rec.get("negatives", [])[:self.max_negatives] if self.negative else []
        if self.negative and not negs:
            return []
        encs = self.template.encode_many(rec["prompt"], [rec["response"], *negs],
                                         _system(rec, self.system), self.seq_len,
                                         rec.get("history", ()), learn_history=True)
        self.stats.add(len(encs) - 1 if self.negative else 1,
                       sum(e.truncated for e in (encs[1:] if self.negative else encs[:1])))
        pad = self.template.tokenizer.pad_id
        if not self.negative:
            t = chat.targets(encs[0], pad)
            element = {"tokens": t["tokens"], "targets": t["targets"], "mask": t["loss_mask"],
                       "neg_index": np.zeros(len(t["tokens"]), np.int32)}
            return [self.transform(element) if self.transform else element]
        out = []
        for k, enc in enumerate(encs[1:], 1):
            t = chat.targets(enc, pad)
            div = chat.first_divergence(encs[0].tokens, enc.tokens)
            after = (np.arange(len(enc.tokens)) + 1 >= div).astype(np.float32)
            out.append({"tokens": t["tokens"], "targets": t["targets"],
                        "mask": t["loss_mask"] * (1.0 - t["format_mask"]) * after,
                        "neg_index": np.full(len(enc.tokens), k, np.int32)})
        return out


class SftBatch:
    """Packed rows -> batch arrays (named with ``prefix``), zero rows up to the batch."""

    def __init__(self, rows: int, pad_id: int, prefix: str, process_index: int,
                 process_count: int):
        local = rows // process_count
        self.rows, self.pad_id, self.prefix = rows, pad_id, prefix
        self.keep = slice(process_index * local, (process_index + 1) * local)

    def __call__(self, elements: list[dict]) -> dict:
        def stack(key, dtype):
            x = np.stack([e[key] for e in elements]).astype(dtype)
            pad = np.zeros((self.rows - len(x), *x.shape[1:]), dtype)
            return np.concatenate([x, pad])[self.keep]

        seg = stack("tokens_segment_ids", np.int32)
        real = seg > 0
        out = {"tokens": np.where(real, stack("tokens", np.int32), self.pad_id),
               "targets": np.where(real, stack("targets", np.int32), self.pad_id),
               "segment_ids": seg, "positions": stack("tokens_positions", np.int32)}
        if self.prefix:
            out.update(mask=stack("mask", np.float32) * real,
                       index=stack("neg_index", np.int32) * real)
        else:
            out["loss_mask"] = stack("mask", np.float32) * real
        return {self.prefix + k: v for k, v in out.items()}

    def zeros(self, seq_len: int) -> dict:
        """An all-padding batch (a finished or disabled stream)."""
        return self([{"tokens": np.zeros(seq_len, np.int32)} | {
            k: np.zeros(seq_len, np.int32) for k in ("targets", "mask", "neg_index",
                                                      "tokens_segment_ids",
                                                      "tokens_positions")}])


SFT_AXES = {k: ax.BT for k in (
    "tokens", "targets", "segment_ids", "positions", "loss_mask", "neg_tokens", "neg_targets",
    "neg_segment_ids", "neg_positions", "neg_mask", "neg_index")}


class SftIterator:
    """Positive rows and negative rows from two packed streams over the same records.

    Both streams shuffle with the same seed; a finished (eval) or disabled stream yields
    all-padding rows. State: both streams' grain states.
    """

    def __init__(self, pos, neg, zero_pos: dict, zero_neg: dict, stats: Stats):
        self._pos, self._neg, self._stats = pos, neg, stats
        self._zero_pos, self._zero_neg = zero_pos, zero_neg

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        p = next(self._pos, None)
        n = next(self._neg, None) if self._neg is not None else None
        if p is None and (n is None or self._neg is None):
            raise StopIteration
        return {**(p or self._zero_pos), **(n or self._zero_neg)}

    def get_state(self) -> dict:
        return {"pos": self._pos.get_state(),
                "neg": None if self._neg is None else self._neg.get_state()}

    def set_state(self, state: dict) -> None:
        self._pos.set_state(state["pos"])
        if self._neg is not None and state.get("neg") is not None:
            self._neg.set_state(state["neg"])

    @property
    def stats(self) -> dict:
        return dict(self._stats.counts)


def has_negatives(source, scan: int = 1000) -> bool:
    return any(source[i].get("negatives") for i in range(min(len(source), scan)))


def make_sft_iterator(cfg, records, template: chat.Template, split: str = "train", *,
                      negatives: bool = False, max_negatives: int | None = None,
                      process_index: int = 0, process_count: int = 1,
                      transform=None) -> SftIterator:
    """Packed SFT batches: positive rows (keys of SFT_AXES without ``neg_``) and, with
    ``negatives``, as many rows of packed negative sequences (``neg_*``; at most
    ``max_negatives`` per record, default ``records.max_negatives``, 0 = all). Without ``negatives`` the ``neg_*`` rows are
    padding, so the positive rows are the same whether or not negatives are used.
    ``transform`` maps each positive element (tokens, targets, mask) before packing."""
    pipeline._check(cfg, process_index, process_count)
    train = split == "train"
    source = records.source(split)
    if len(source) == 0:
        raise DataError(f"the {split} split of {records.fingerprint} has no records")
    if train and negatives and not has_negatives(source):
        raise ConfigError(f"negative feedback needs records with 'negatives'; the train split "
                          f"of {records.fingerprint} has none")
    stats = Stats()
    cap = cfg.records.max_negatives if max_negatives is None else max_negatives
    batches = [SftBatch(cfg.batch_size, template.tokenizer.pad_id, prefix, process_index,
                        process_count) for prefix in ("", "neg_")]

    def stream(negative: bool, batch_fn: SftBatch):
        ds = grain.MapDataset.source(source)
        if train:
            ds = ds.shuffle(seed=cfg.seed).repeat(cfg.num_epochs or None)
        ds = grain.experimental.FlatMapIterDataset(
            ds.to_iter_dataset(grain.ReadOptions(num_threads=0)),
            SftElements(template, cfg.seq_len, negative, cap, cfg.records.system, stats,
                        None if negative else transform))
        length = {k: cfg.seq_len for k in ("tokens", "targets", "mask", "neg_index")}
        ds = grain.experimental.FirstFitPackIterDataset(
            ds, length_struct=length, num_packing_bins=cfg.batch_size, shuffle_bins=False)
        ds = ds.batch(cfg.batch_size, drop_remainder=train, batch_fn=batch_fn)
        if not train and cfg.eval_batches:
            ds = grain.experimental.LimitIterDataset(ds, cfg.eval_batches)
        return iter(ds)

    neg = stream(True, batches[1]) if negatives else None
    return SftIterator(stream(False, batches[0]), neg, batches[0].zeros(cfg.seq_len),
                       batches[1].zeros(cfg.seq_len), stats)


# ----------------------------------------------------------------------------- pairs / KTO
class Indexed:
    """Source wrapper adding ``index`` (and, for feedback, the mismatched ``kl_response``)."""

    def __init__(self, source, kind: str):
        self.source, self.kind = source, kind

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        rec = {**self.source[i], "index": int(i)}
        if self.kind == "feedback":
            rec["kl_response"] = self.source[(int(i) + 1) % len(self.source)]["response"]
        return rec


class PairExample(grain.transforms.Map):
    """Record -> padded arrays for each sequence of the pair (see the module docstring)."""

    def __init__(self, template: chat.Template, kind: str, seq_len: int, system: str,
                 stats: Stats):
        self.template, self.kind, self.seq_len = template, kind, seq_len
        self.system, self.stats = system, stats

    def map(self, rec):
        if self.kind == "preference":
            responses = [rec["chosen"], rec["rejected"]]
        else:
            responses = [rec["response"], rec["kl_response"]]
        encs = self.template.encode_many(rec["prompt"], responses,
                                         _system(rec, self.system), self.seq_len,
                                         rec.get("history", ()))
        self.stats.add(len(encs), sum(e.truncated for e in encs))
        out = {"index": np.int32(rec["index"]),
               SCALARS[self.kind]: np.int32(rec[SCALARS[self.kind]])}
        pad, t = self.template.tokenizer.pad_id, self.seq_len
        for name, enc in zip(SEQUENCES[self.kind], encs):
            arrays = chat.targets(enc, pad)
            n = len(enc.tokens)
            for key, value in arrays.items():
                fill = pad if key in ("tokens", "targets") else 0
                out[f"{name}_{key}"] = np.pad(value, (0, t - n), constant_values=fill)
            out[f"{name}_segment_ids"] = (np.arange(t) < n).astype(np.int32)
        return out


def stack_padded(elements: list[dict], rows: int) -> dict:
    """Stack example dicts into ``rows`` rows; missing rows (a short last eval batch) are
    copies of the first row with ``weight`` 0."""
    n = len(elements)
    out = {}
    for key in elements[0]:
        x = np.stack([e[key] for e in elements])
        out[key] = np.concatenate([x, np.repeat(x[:1], rows - n, axis=0)])
    out["weight"] = (np.arange(rows) < n).astype(np.float32)
    return out


class PairBatch:
    """Stacks examples, adds ``weight``, reference log-probs and padding rows."""

    def __init__(self, kind: str, rows: int, process_index: int, process_count: int,
                 ref_table: np.ndarray | None, keep_index: bool, ref_columns: bool):
        local = rows // process_count
        self.kind, self.rows, self.ref_table, self.keep_index = kind, rows, ref_table, keep_index
        self.ref_columns = ref_columns
        self.keep = slice(process_index * local, (process_index + 1) * local)

    def __call__(self, elements: list[dict]) -> dict:
        out = stack_padded(elements, self.rows)
        if self.ref_columns:
            for j, name in enumerate(SEQUENCES[self.kind]):
                out[f"ref_{name}_logps"] = (
                    self.ref_table[out["index"], j].astype(np.float32)
                    if self.ref_table is not None else np.zeros(self.rows, np.float32))
        if not self.keep_index:
            del out["index"]
        return {k: v[self.keep] for k, v in out.items()}


def pair_axes(kind: str, with_ref: bool) -> dict:
    """Trainer.batch_axes for pair / KTO batches."""
    axes = {"weight": ax.B, SCALARS[kind]: ax.B}
    for name in SEQUENCES[kind]:
        for key in ("tokens", "targets", "segment_ids", "loss_mask", "format_mask"):
            axes[f"{name}_{key}"] = ax.BT
        if with_ref:
            axes[f"ref_{name}_logps"] = ax.B
    return axes


def make_pair_iterator(cfg, records, template: chat.Template, split: str = "train", *,
                       ref_table: np.ndarray | None = None, ref_columns: bool | None = None,
                       ordered: bool | None = None, keep_index: bool = False,
                       process_index: int = 0, process_count: int = 1) -> RecordIterator:
    """Pair (or KTO) batches. ``ordered`` (default: not train) makes one pass in record
    order with a zero-weight padded last batch; ``ref_table[index]`` supplies precomputed
    reference log-probs (``ref_columns=True`` without a table adds zero columns, so train
    and eval batches share keys); ``keep_index`` keeps the record index."""
    kind = records.kind
    if kind not in SEQUENCES:
        raise ConfigError(f"pair batches need preference or feedback records, got {kind!r}")
    pipeline._check(cfg, process_index, process_count)
    ordered = split != "train" if ordered is None else ordered
    source = records.source(split)
    if len(source) < (2 if kind == "feedback" else 1):
        raise DataError(f"the {split} split of {records.fingerprint} has too few records "
                        f"({len(source)})")
    if ref_table is not None and len(ref_table) != len(source):
        raise DataError(f"reference table has {len(ref_table)} rows for {len(source)} records")
    stats = Stats()
    ds = grain.MapDataset.source(Indexed(source, kind))
    if not ordered:
        ds = ds.shuffle(seed=cfg.seed).repeat(cfg.num_epochs or None)
    ds = ds.map(PairExample(template, kind, cfg.seq_len, cfg.records.system, stats))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                              prefetch_buffer_size=cfg.prefetch))
    ds = ds.batch(cfg.batch_size, drop_remainder=not ordered,
                  batch_fn=PairBatch(kind, cfg.batch_size, process_index, process_count,
                                     ref_table, keep_index,
                                     ref_table is not None if ref_columns is None
                                     else ref_columns))
    if split != "train" and cfg.eval_batches:
        ds = grain.experimental.LimitIterDataset(ds, cfg.eval_batches)
    return RecordIterator(iter(ds), stats)
