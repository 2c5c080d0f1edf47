"""Post-training record formats and their validation (one JSON object per line).

* ``sft``: ``prompt``, ``response``; optional ``system`` and ``negatives`` (list of
  undesired responses for negative feedback).
* ``preference``: ``prompt``, ``chosen``, ``rejected``; optional ``system`` and
  ``strength``, the Llama 2 preference level: 0 = negligibly better / unsure,
  1 = slightly better, 2 = better, 3 = significantly better (or those names).
* ``feedback`` (KTO, unpaired): ``prompt``, ``response``, ``label`` = desirable /
  undesirable (also true / false, 1 / 0).

``parse_line`` returns ``(record, None)`` or ``(None, reason)``; callers count reasons
and skip the record. Besides missing or mistyped fields, reasons include ``invalid_json``,
``too_deeply_nested`` (nesting past Python's recursion limit) and ``invalid_unicode`` (a
text field holding a lone surrogate such as the JSON escape ``\\ud800``, which is not
encodable as UTF-8). A normalised record has every field of its kind (``system`` "",
``negatives`` [], ``strength`` -1 when absent).
"""
from __future__ import annotations

import json
from typing import Any

KINDS = ("sft", "preference", "feedback")
TEXT_FIELDS = {"sft": ("prompt", "response"), "preference": ("prompt", "chosen", "rejected"),
               "feedback": ("prompt", "response")}
STRENGTHS = {"negligibly_better": 0, "unsure": 0, "slightly_better": 1, "better": 2,
             "significantly_better": 3}
LABELS = {"desirable": 1, "undesirable": 0, "true": 1, "false": 0}
NO_STRENGTH = -1


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"record kind must be one of {KINDS}, got {kind!r}")
    return kind


def parse_line(kind: str, line: str) -> tuple[dict | None, str | None]:
    """A JSONL line -> (normalised record, None) or (None, reason)."""
    obj, reason = _loads(line)
    return (None, reason) if reason else normalize(kind, obj)


def parse_prompt_line(line: str) -> tuple[dict | None, str | None]:
    """A prompts-JSONL line (``prompt``, optional ``system``; RL / rejection sampling) ->
    ({"prompt", "system"}, None) or (None, reason). A non-text system becomes ""."""
    obj, reason = _loads(line)
    if reason:
        return None, reason
    if not isinstance(obj, dict):
        return None, "not_an_object"
    prompt, system = obj.get("prompt"), obj.get("system", "")
    if not isinstance(prompt, str):
        return None, "missing_prompt" if prompt is None else "non_text_prompt"
    if not prompt.strip():
        return None, "empty_prompt"
    out = {"prompt": prompt, "system": system if isinstance(system, str) else ""}
    return (out, None) if all(map(is_utf8, out.values())) else (None, "invalid_unicode")


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


def normalize(kind: str, obj: Any) -> tuple[dict | None, str | None]:
    """Validate a decoded record of ``kind``; see the module docstring for the fields."""
    if not isinstance(obj, dict):
        return None, "not_an_object"
    out: dict[str, Any] = {}
    for name in TEXT_FIELDS[kind]:
        if name not in obj:
            return None, f"missing_{name}"
        if not isinstance(obj[name], str):
            return None, f"non_text_{name}"
        if not obj[name].strip():
            return None, f"empty_{name}"
        out[name] = obj[name]
    system = obj.get("system", "")
    if not isinstance(system, str):
        return None, "non_text_system"
    out["system"] = system
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
    texts = [v for v in out.values() if isinstance(v, str)] + out.get("negatives", [])
    if not all(map(is_utf8, texts)):
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
