"""Prompt batches for RL (PPO / GRPO) and generation: chat-formatted prompts, right-padded.

Each record's prompt (with its earlier turns, ``history``) becomes the generation input
of the chat template (BOS ... ``<|assistant|>`` in kyx's format, kyx/data/chat.py), its
text cut from the left to fit ``seq_len`` (counted in ``stats['truncated']``). A batch of
``batch_size`` prompts, each repeated ``group_size`` times in consecutive rows (GRPO's
groups), holds::

  prompt_tokens   [B·G, seq_len] int32, right-padded with pad_id
  prompt_lengths  [B·G] int32
  index           [B·G] int32, the record's index in its split (prompt text lookup)
  weight          [B·G] float32, 0 on rows padding the last eval batch

Train iterators shuffle (seeded, a new order each epoch) and repeat; eval iterators make
one ordered pass (``eval_batches`` caps it). Iterators are checkpointable.
"""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from kyx import axes as ax
from kyx.data import chat, pipeline
from kyx.data.preference import RecordIterator, Stats, stack_padded
from kyx.errors import DataError

PROMPT_AXES = {"prompt_tokens": ax.BT, "prompt_lengths": ax.B, "index": ax.B, "weight": ax.B}


def prompt_ids(template: chat.Template, prompt: str, system: str, max_len: int,
               history: Sequence[dict] = ()) -> tuple[list[int], bool]:
    """(generation input ids, truncated): the prompt text is cut from the left to fit."""
    spans = template.prompt_spans(prompt, system, history)
    (cut, _, truncated), = chat.fit(spans, [[]], max_len)
    ids = [i for _, part in cut for i in part]
    if len(ids) > max_len:
        raise DataError(f"data.seq_len={max_len} cannot hold even the chat markers of a "
                        f"prompt ({len(ids)} tokens); raise data.seq_len")
    return ids, truncated


def prompt_row(template: chat.Template, prompt: str, system: str, seq_len: int,
               index: int, history: Sequence[dict] = ()) -> tuple[dict, bool]:
    """(one batch row, truncated): the padded generation input of a prompt."""
    ids, truncated = prompt_ids(template, prompt, system, seq_len, history)
    tokens = np.full(seq_len, template.tokenizer.pad_id, np.int32)
    tokens[:len(ids)] = ids
    return {"prompt_tokens": tokens, "prompt_lengths": np.int32(len(ids)),
            "index": np.int32(index)}, truncated


class PromptExample(grain.transforms.Map):
    def __init__(self, template, seq_len: int, system: str, stats: Stats):
        self.template, self.seq_len, self.system, self.stats = template, seq_len, system, stats

    def map(self, rec):
        row, truncated = prompt_row(self.template, rec["prompt"],
                                    rec.get("system") or self.system, self.seq_len, rec["index"],
                                    rec.get("history", ()))
        self.stats.add(1, int(truncated))
        return row


class PromptBatch:
    """Stacks prompts, repeats each ``group_size`` times, pads, keeps this process's rows."""

    def __init__(self, prompts: int, group_size: int, process_index: int, process_count: int):
        self.prompts, self.group_size = prompts, group_size
        local = prompts * group_size // process_count
        self.keep = slice(process_index * local, (process_index + 1) * local)

    def __call__(self, elements: list[dict]) -> dict:
        out = stack_padded(elements, self.prompts)
        return {k: np.repeat(v, self.group_size, axis=0)[self.keep] for k, v in out.items()}


class _Indexed:
    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return {**self.source[i], "index": int(i)}


def make_prompt_iterator(cfg, records, template: chat.Template, split: str = "train", *,
                         group_size: int = 1, process_index: int = 0,
                         process_count: int = 1) -> RecordIterator:
    """Prompt batches of ``cfg.batch_size`` prompts x ``group_size`` samples each."""
    if (cfg.batch_size * group_size) % process_count:
        raise DataError(f"{cfg.batch_size} prompts x {group_size} samples do not split over "
                        f"{process_count} processes")
    pipeline._check(cfg, process_index, process_count)
    source = records.source(split)
    if len(source) == 0:
        raise DataError(f"the {split} split of {records.fingerprint} has no records")
    stats = Stats()
    train = split == "train"
    ds = grain.MapDataset.source(_Indexed(source))
    if train:
        ds = ds.shuffle(seed=cfg.seed).repeat(cfg.num_epochs or None)
    ds = ds.map(PromptExample(template, cfg.seq_len, cfg.records.system, stats))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
    ds = ds.batch(cfg.batch_size, drop_remainder=train,
                  batch_fn=PromptBatch(cfg.batch_size, group_size, process_index, process_count))
    if not train and cfg.eval_batches:
        ds = grain.experimental.LimitIterDataset(ds, cfg.eval_batches)
    return RecordIterator(iter(ds), stats)
