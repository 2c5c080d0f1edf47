"""Post-training record formats and their validation (one JSON object per line).

* ``sft``: ``prompt``, ``response``; optional ``system`` and ``negatives`` (list of
  undesired responses for negative feedback). Or a conversation, ``messages``.
* ``preference``: ``prompt``, ``chosen``, ``rejected``; optional ``system`` and
  ``strength``, the Llama 2 preference level: 0 = negligibly better / unsure,
  1 = slightly better, 2 = better, 3 = significantly better (or those names).
* ``feedback`` (KTO, unpaired): ``prompt``, ``response``, ``label`` = desirable /
  undesirable (also true / false, 1 / 0).

**Conversations** (the TRL convention): a list of ``{"role", "content"}`` messages, roles
``system`` (first message only), ``user`` and ``assistant``, user and assistant turns
alternating from a user turn:

* sft: ``messages`` ending with an assistant turn. SFT learns every assistant turn
  (each one is a response the model should give in that context; the chat template
  marks them all, kyx/data/chat.py); ``negatives`` are alternatives to the final turn.
* preference / feedback: ``prompt`` is a text or messages ending with a user turn;
  ``chosen`` / ``rejected`` / ``response`` a text or a one-message list holding the
  assistant turn. Without ``prompt``, ``chosen`` and ``rejected`` may be whole
  conversations: their common leading messages are the prompt and each must then end
  in one assistant turn (TRL's implicit prompt). Earlier assistant turns of a prompt
  are context: only the final turn is compared.
* prompts (RL, rejection sampling): ``prompt`` as a text or messages ending with a user
  turn (or those messages as ``messages``).

A normalised record has every field of its kind (``system`` "", ``negatives`` [],
``strength`` -1 when absent) and ``history``: the turns between the system message and
the final user turn (``[]`` for single-turn records), while ``prompt`` is the text of the
final user turn and ``response`` / ``chosen`` / ``rejected`` the text of the final
assistant turn, so code that only needs single-turn text reads the same fields.

``parse_line`` returns ``(record, None)`` or ``(None, reason)``; callers count reasons
and skip the record. Besides missing or mistyped fields, reasons include ``invalid_json``,
``too_deeply_nested`` (nesting past Python's recursion limit), ``invalid_unicode`` (a
text field holding a lone surrogate such as the JSON escape ``\\ud800``, which is not
encodable as UTF-8) and, for conversations, ``bad_messages`` (not a list of role /
content objects), ``bad_role``, ``misplaced_system``, ``roles_not_alternating``,
``empty_turn``, ``last_turn_not_assistant`` / ``last_turn_not_user``, ``bad_chosen`` /
``bad_rejected`` / ``bad_response`` (a completion that is not one assistant message)
and ``no_common_prompt`` (implicit-prompt pairs that share no leading user turn).
"""
from __future__ import annotations

import json
from typing import Any

KINDS = ("sft", "preference", "feedback")
TEXT_FIELDS = {"sft": ("prompt", "response"), "preference": ("prompt", "chosen", "rejected"),
               "feedback": ("prompt", "response")}
COMPLETIONS = {"sft": ("response",), "preference": ("chosen", "rejected"),
               "feedback": ("response",)}
STRENGTHS = {"negligibly_better": 0, "unsure": 0, "slightly_better": 1, "better": 2,
             "significantly_better": 3}
LABELS = {"desirable": 1, "undesirable": 0, "true": 1, "false": 0}
NO_STRENGTH = -1
ROLES = ("system", "user", "assistant")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"record kind must be one of {KINDS}, got {kind!r}")
    return kind


def parse_line(kind: str, line: str) -> tuple[dict | None, str | None]:
    """A JSONL line -> (normalised record, None) or (None, reason)."""
    obj, reason = _loads(line)
    return (None, reason) if reason else normalize(kind, obj)


def parse_prompt_line(line: str) -> tuple[dict | None, str | None]:
    """A prompts-JSONL line (``prompt`` text or messages, optional ``system``; RL /
    rejection sampling) -> ({"prompt", "system", "history"}, None) or (None, reason).
    A non-text system becomes ""."""
    obj, reason = _loads(line)
    if reason:
        return None, reason
    if not isinstance(obj, dict):
        return None, "not_an_object"
    if "prompt" not in obj and "messages" in obj:
        obj = {**obj, "prompt": obj["messages"]}
    system = obj.get("system", "")
    out, reason = parse_prompt(obj.get("prompt"), system if isinstance(system, str) else "")
    if reason:
        return None, reason
    return (out, None) if _all_utf8(out) else (None, "invalid_unicode")


def _loads(line: str) -> tuple[Any, str | None]:
    try:
        return json.loads(line), None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "invalid_json"
    except RecursionError:
        return None, "too_deeply_nested"


def is_utf8(text: str) -> bool:
    """False for strings holding lone surrogates (JSON ``"\\ud800"``), which UTF-8 cannot store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_utf8(rec: dict) -> bool:
    texts = [v for v in rec.values() if isinstance(v, str)] + rec.get("negatives", [])
    texts += [m["content"] for m in rec.get("history", [])]
    return all(map(is_utf8, texts))


# ----------------------------------------------------------------------------- conversations
def messages(value: Any) -> tuple[list[dict] | None, str | None]:
    """Validate a message list: ``{"role", "content"}`` objects of text, a system message
    only first, then user and assistant turns alternating from a user turn. Returns
    (messages as plain dicts, None) or (None, reason)."""
    if not isinstance(value, list) or not value:
        return None, "bad_messages"
    out = []
    for m in value:
        if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)):
            return None, "bad_messages"
        if m["role"] not in ROLES:
            return None, "bad_role"
        out.append({"role": m["role"], "content": m["content"]})
    if any(m["role"] == "system" for m in out[1:]):
        return None, "misplaced_system"
    turns = out[1:] if out[0]["role"] == "system" else out
    if not turns or any(m["role"] != ROLES[1 + i % 2] for i, m in enumerate(turns)):
        return None, "roles_not_alternating"
    if any(not m["content"].strip() for m in turns):
        return None, "empty_turn"
    return out, None


def split(msgs: list[dict], system: str = "") -> tuple[str, list[dict], list[dict]]:
    """(system text, turns before the final user turn, turns from it on) of a validated
    message list; a system message overrides ``system``."""
    if msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    return system, msgs[:last_user], msgs[last_user:]


def to_messages(rec: dict, response: str | None = None) -> list[dict]:
    """A normalised record's conversation: system (if any), history, the final user turn
    and, given ``response``, the final assistant turn."""
    out = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
    out += list(rec.get("history", [])) + [{"role": "user", "content": rec["prompt"]}]
    if response is not None:
        out.append({"role": "assistant", "content": response})
    return out


def parse_prompt(value: Any, system: str = "") -> tuple[dict | None, str | None]:
    """A prompt (text, or messages ending with a user turn) -> ({prompt, system, history},
    None) or (None, reason); UTF-8 is checked by the callers."""
    if isinstance(value, list):
        msgs, reason = messages(value)
        if reason:
            return None, reason
        if msgs[-1]["role"] != "user":
            return None, "last_turn_not_user"
        system, history, last = split(msgs, system)
        return {"prompt": last[0]["content"], "system": system, "history": history}, None
    if not isinstance(value, str):
        return None, "missing_prompt" if value is None else "non_text_prompt"
    if not value.strip():
        return None, "empty_prompt"
    return {"prompt": value, "system": system, "history": []}, None


def _completion(name: str, value: Any) -> tuple[str | None, str | None]:
    """A completion (text, or one assistant message) -> its text."""
    if isinstance(value, list):
        if (len(value) != 1 or not isinstance(value[0], dict)
                or value[0].get("role") != "assistant"
                or not isinstance(value[0].get("content"), str)):
            return None, f"bad_{name}"
        value = value[0]["content"]
    if value is None:
        return None, f"missing_{name}"
    if not isinstance(value, str):
        return None, f"non_text_{name}"
    if not value.strip():
        return None, f"empty_{name}"
    return value, None


def _implicit_prompt(obj: dict) -> tuple[dict | None, str | None]:
    """TRL's implicit prompt: ``chosen`` / ``rejected`` are whole conversations; their
    common leading messages become ``prompt``, the rest of each its completion."""
    convs = {}
    for name in ("chosen", "rejected"):
        msgs, reason = messages(obj[name])
        if reason:
            return None, f"bad_{name}" if reason == "bad_messages" else reason
        convs[name] = msgs
    a, b = convs["chosen"], convs["rejected"]
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    if not any(m["role"] == "user" for m in a[:n]):
        return None, "no_common_prompt"
    return {**obj, "prompt": a[:n], "chosen": a[n:], "rejected": b[n:]}, None


def normalize(kind: str, obj: Any) -> tuple[dict | None, str | None]:
    """Validate a decoded record of ``kind``; see the module docstring for the fields."""
    if not isinstance(obj, dict):
        return None, "not_an_object"
    system = obj.get("system", "")
    if not isinstance(system, str):
        return None, "non_text_system"
    if kind == "sft" and "messages" in obj:
        msgs, reason = messages(obj["messages"])
        if reason:
            return None, reason
        if msgs[-1]["role"] != "assistant":
            return None, "last_turn_not_assistant"
        obj = {**obj, "prompt": msgs[:-1], "response": msgs[-1]["content"]}
    elif (kind == "preference" and "prompt" not in obj
          and isinstance(obj.get("chosen"), list) and isinstance(obj.get("rejected"), list)):
        obj, reason = _implicit_prompt(obj)
        if reason:
            return None, reason
    out, reason = parse_prompt(obj.get("prompt"), system)
    if reason:
        return None, reason
    for name in COMPLETIONS[kind]:
        out[name], reason = _completion(name, obj.get(name))
        if reason:
            return None, reason
    if kind == "sft":
        negatives = obj.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            return None, "bad_negatives"
        out["negatives"] = [n for n in negatives if n.strip() and n != out["response"]]
    elif kind == "preference":
        if out["chosen"] == out["rejected"]:
            return None, "identical_pair"
        strength, reason = _strength(obj.get("strength"))
        if reason:
            return None, reason
        out["strength"] = strength
    else:
        label = obj.get("label")
        if isinstance(label, str):
            label = LABELS.get(label.strip().lower())
        elif isinstance(label, bool) or label in (0, 1):
            label = int(label)
        else:
            label = None
        if label is None:
            return None, "bad_label"
        out["label"] = label
    if not _all_utf8(out):
        return None, "invalid_unicode"
    return out, None


def _strength(value) -> tuple[int, str | None]:
    if value is None:
        return NO_STRENGTH, None
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "_").replace("-", "_")
        return (STRENGTHS[key], None) if key in STRENGTHS else (NO_STRENGTH, "bad_strength")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1, 2, 3):
        return int(value), None
    return NO_STRENGTH, "bad_strength"
