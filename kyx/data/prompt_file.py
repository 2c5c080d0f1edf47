"""A file of prompts to generate from (`kyx sample --prompts FILE`), strictly validated.

* ``.txt``: one text prompt per line (the line without its newline; blank lines skipped).
* anything else: JSONL, one prompt record per line in the format of RL / rejection
  sampling (kyx/data/records.py ``parse_prompt_line``): ``{"prompt": text}``, optionally
  with ``"system"``, or a conversation ending with a user turn as ``"prompt"`` or
  ``"messages"``. Blank lines are skipped.

Unlike the training readers, which count and skip malformed records, every line here is
a request for an output row: a malformed line is a DataError naming the file, the line
number and the reason, before anything is generated.

A prompt is returned as its text, or as its messages (``records.to_messages``) when it
was given as messages or has a system message: exactly the values ``LoadedModel.generate``
takes (conversations with ``chat=True``).
"""
from __future__ import annotations

import json
import os

from kyx.data import jrt as jrt_prompts
from kyx.data import records
from kyx.errors import DataError

TEXT_SUFFIX = ".txt"


def read_prompt_file(path: str, chat: bool = True,
                     jrt_template: str | None = None) -> list[str | list[dict]]:
    """The prompts of ``path`` in file order; a DataError for a missing file, a malformed
    line (``path:line: reason``), a file without prompts or, unless ``chat``, a
    conversation (it needs the chat template).

    ``jrt_template``: JRT prompting (kyx/data/jrt.py): every line must be a JSONL record
    ``{"context": text, "question": text}`` (other fields are ignored), and its prompt is
    ``jrt_prompt(context, question, jrt_template)`` (the default template: the context
    twice, then the question)."""
    if jrt_template is not None and path.endswith(TEXT_SUFFIX):
        raise DataError(f"{path}: JRT prompting (--jrt) needs JSONL records "
                        "{\"context\": text, \"question\": text}, not plain-text lines")
    if not os.path.isfile(path):
        raise DataError(f"prompts file {path!r} does not exist (JSONL of {{\"prompt\": ...}} "
                        f"or {{\"messages\": [...]}} per line, or {TEXT_SUFFIX}: one prompt "
                        "per line)")
    text_lines = path.endswith(TEXT_SUFFIX)
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not UTF-8 text") from None
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            prompt = (line if text_lines else
                      _record(path, n, line) if jrt_template is None else
                      _jrt_record(path, n, line, jrt_template))
            if not chat and not isinstance(prompt, str):
                raise DataError(f"{path}:{n}: a conversation (messages or a system message) "
                                "is formatted with the chat template: add --chat")
            out.append(prompt)
    if not out:
        raise DataError(f"{path} holds no prompt")
    return out


def _jrt_record(path: str, n: int, line: str, template: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str)
                                            for k in jrt_prompts.FIELDS):
        raise DataError(f"{path}:{n}: JRT prompting (--jrt) needs a JSON object with text "
                        "fields \"context\" and \"question\"")
    return jrt_prompts.jrt_prompt(obj["context"], obj["question"], template)


def _record(path: str, n: int, line: str) -> str | list[dict]:
    rec, reason = records.parse_prompt_line(line)
    if reason:
        hint = (f" (plain-text prompts go in a {TEXT_SUFFIX} file, one per line)"
                if reason == "invalid_json" else "")
        raise DataError(f"{path}:{n}: {reason}; expected {{\"prompt\": text}} or "
                        f"{{\"messages\": [...ending with a user turn]}}{hint}")
    obj = json.loads(line)  # valid: parse_prompt_line accepted it
    given_as_messages = isinstance(obj.get("prompt", obj.get("messages")), list)
    if given_as_messages or rec["system"] or rec["history"]:
        return records.to_messages(rec)
    return rec["prompt"]
