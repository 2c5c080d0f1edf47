"""Post-training record formats and their validation (one JSON object per line).

* ``sft``: ``prompt``, ``response``; optional ``system`` and ``negatives`` (list of
  undesired responses for negative feedback).
* ``preference``: ``prompt``, ``chosen``, ``rejected``; optional ``system`` and
  ``strength``, the Llama 2 preference level: 0 = negligibly better / unsure,
  1 = slightly better, 2 = better, 3 = significantly better (or those names).
* ``feedback`` (KTO, unpaired): ``prompt``, ``response``, ``label`` = desirable /
  undesirable (also true / false, 1 / 0).

``parse_line`` returns ``(record, None)`` or ``(None, reason)``; callers count reasons
and skip the record. A normalised record has every field of its kind (``system`` "",
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
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "invalid_json"
    return normalize(kind, obj)


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
