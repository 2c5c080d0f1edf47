"""`kyx sample --prompts FILE --out OUT.jsonl`: completions of a prompts file, resumable.

One output row per prompt, in prompt order::

    {"index": 0, "prompt": <text or messages as read>, "completion": text,
     "prompt_tokens": n, "completion_tokens": m, "stop": "eos" | "length",
     "settings": {model, step, int8, max_tokens, temperature, ..., batch_size}}

Rows are appended a batch at a time and flushed to disk (fsync) after each batch, so a
killed run keeps every finished batch. Run again with the same ``--out`` and it continues
after the rows already there: a torn last line is cut off, the batch holding the next
row is generated again (batch i always samples with the same key, kyx/model/decode.py
``generate_batches``) and only its missing rows are written, so the file equals that of
an uninterrupted run. Rows must match the prompts file (same prompt at the same index)
and the settings; otherwise the run stops with a DataError before generating anything.
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

from kyx.errors import ConfigError, DataError
from kyx.fileio import is_local


def plan_resume(out: str, prompts: Sequence, settings: dict) -> int:
    """How many rows of ``out`` are already done (0 if it does not exist). Cuts off a
    torn last line; a row that does not belong to these prompts and settings is a
    DataError naming the row and what differs."""
    if not is_local(out):
        raise ConfigError(f"--out {out!r}: resumable output is appended and flushed per "
                          "batch, which needs a local file; copy it to the object store after")
    if not os.path.exists(out):
        return 0
    with open(out, "rb") as f:
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):  # killed in the middle of a write: drop the torn row
        with open(out, "r+b") as f:
            f.truncate(len(complete))
    want = json.loads(json.dumps(settings))  # as it reads back (tuples -> lists)
    lines = complete.decode("utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        problem = _mismatch(line, i, prompts, want)
        if problem:
            raise DataError(f"{out} row {i + 1} {problem}, so it is not the output of this "
                            "run to resume; give another --out, or delete the file to start over")
    return len(lines)


def _mismatch(line: str, i: int, prompts: Sequence, settings: dict) -> str | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return "is not JSON"
    if not isinstance(row, dict) or row.get("index") != i:
        return f"is not row {i} of a kyx sample output"
    if i >= len(prompts):
        return f"is past the {len(prompts)} prompts of the prompts file"
    if row.get("prompt") != prompts[i]:
        return f"holds another prompt than line {i + 1} of the prompts file"
    if row.get("settings") != settings:
        old = row.get("settings") or {}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        return "was made with other settings (" + ", ".join(
            f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff) + ")"
    return None


def sample_to_jsonl(model, prompts: Sequence, out: str, settings: dict, *,
                    sampling: dict, batch_size: int, chat: bool = False,
                    log=print) -> dict:
    """Generate the rows of ``prompts`` missing from ``out`` with ``model`` (a
    ``kyx.api.LoadedModel``) and append them batch by batch. ``sampling``: the keyword
    arguments of ``LoadedModel.generate_batches`` (max_tokens, temperature, ...).
    Returns counts and timing: rows, written, resumed_after, seconds, completion tokens."""
    done = plan_resume(out, prompts, settings)
    summary = {"rows": len(prompts), "resumed_after": done, "written": 0, "seconds": 0.0,
               "completion_tokens": 0}
    if done == len(prompts):
        return summary
    ids, eos = model.prompt_ids(prompts, chat)
    start = done // batch_size
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        batches = model.generate_batches(ids, eos, batch_size=batch_size, start_batch=start,
                                         **sampling)
        for k, new_ids in enumerate(batches, start):
            rows = []
            for j, completion in enumerate(new_ids):
                i = k * batch_size + j
                if i < done:
                    continue  # written before the resume
                rows.append(_row(i, prompts[i], ids[i], completion, model, settings,
                                 sampling["max_tokens"]))
                summary["completion_tokens"] += len(completion)
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
            summary["written"] += len(rows)
            log(f"batch {k + 1}/{-(-len(prompts) // batch_size)}: "
                f"{done + summary['written']}/{len(prompts)} rows")
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _row(i: int, prompt, prompt_ids: list[int], completion: list[int], model,
         settings: dict, max_tokens: int) -> dict:
    return {"index": i, "prompt": prompt, "completion": model.tokenizer.decode(completion),
            "prompt_tokens": len(prompt_ids), "completion_tokens": len(completion),
            "stop": "eos" if len(completion) < max_tokens else "length",
            "settings": settings}
