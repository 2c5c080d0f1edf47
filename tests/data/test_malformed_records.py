"""Hostile JSONL lines (lone surrogates, deep nesting) are counted and skipped, never crash."""
import json

import pytest

from kyx.data import preference, records
from kyx.data.preference_corpus import load_records

SURROGATE = '{"prompt": "\\ud800 lone", "response": "x"}'  # JSON escape -> lone surrogate
DEEP = "[" * 200_000 + "]" * 200_000
DEEP_IN_FIELD = '{"prompt": "p", "response": "r", "x": ' + DEEP + "}"
GOOD = {"sft": {"prompt": "p{}", "response": "r{}"},
        "preference": {"prompt": "p{}", "chosen": "a{}", "rejected": "b{}"},
        "feedback": {"prompt": "p{}", "response": "r{}", "label": 1}}
BAD = {"sft": SURROGATE,
       "preference": '{"prompt": "p", "chosen": "a", "rejected": "b\\udfff"}',
       "feedback": '{"prompt": "p", "response": "r", "system": "\\udc80", "label": 1}'}


def test_parse_line_lone_surrogate_and_deep_nesting():
    assert records.parse_line("sft", SURROGATE) == (None, "invalid_unicode")
    assert records.parse_line("sft", '{"prompt": "p", "response": "r", "negatives": '
                                     '["\\ud800"]}') == (None, "invalid_unicode")
    for kind, line in BAD.items():
        assert records.parse_line(kind, line) == (None, "invalid_unicode"), kind
    assert records.parse_line("sft", DEEP) == (None, "too_deeply_nested")
    assert records.parse_line("sft", DEEP_IN_FIELD) == (None, "too_deeply_nested")
    # a surrogate pair is a valid character, and moderate nesting is fine
    ok, _ = records.parse_line("sft", '{"prompt": "\\ud83d\\ude00", "response": "r", '
                                      '"meta": ' + "[" * 50 + "]" * 50 + "}")
    assert ok["prompt"] == "\U0001F600"


def test_parse_prompt_line():
    """Prompts JSONL for RL / rejection sampling (kyx.alignment.rejection.read_prompts)."""
    assert records.parse_prompt_line('{"prompt": "\\ud800 lone"}') == (None, "invalid_unicode")
    assert records.parse_prompt_line('{"prompt": "p", "system": "\\udfff"}') == \
        (None, "invalid_unicode")
    assert records.parse_prompt_line(DEEP) == (None, "too_deeply_nested")
    assert records.parse_prompt_line("{bad") == (None, "invalid_json")
    assert records.parse_prompt_line('{"prompt": 3}') == (None, "non_text_prompt")
    assert records.parse_prompt_line('{"system": "s"}') == (None, "missing_prompt")
    assert records.parse_prompt_line('{"prompt": "p", "system": 1}') == \
        ({"prompt": "p", "system": "", "history": []}, None)


@pytest.mark.parametrize("kind", ["sft", "preference", "feedback"])
def test_jsonl_builder_skips_surrogates_and_deep_nesting(make_cfg, tmp_path, kind):
    good = [json.dumps({k: v.format(i) if isinstance(v, str) else v
                        for k, v in GOOD[kind].items()}) for i in range(4)]
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("\n".join(good[:2] + [BAD[kind], DEEP, DEEP_IN_FIELD] + good[2:]) + "\n")
    cfg = make_cfg(tmp_path / "data")
    cfg.records = preference.records_config()
    cfg.records.source, cfg.records.path = "jsonl", str(path)
    recs = load_records(cfg, kind)
    st = recs.stats
    assert st["records_seen"] == 7 and st["records_kept"] == 4
    assert st["skipped"] == {"invalid_unicode": 1, "too_deeply_nested": 2}
    assert st["skipped_at"]["invalid_unicode"] == [f"{kind}.jsonl:3"]
    assert st["skipped_at"]["too_deeply_nested"] == [f"{kind}.jsonl:4", f"{kind}.jsonl:5"]
    n = len(recs.source("train")) + len(recs.source("validation"))
    assert n == 4


def test_rejection_sampling_prompts_skip_surrogates_deep_nesting_and_bad_bytes(tmp_path):
    from kyx.alignment.rejection import read_prompts
    path = tmp_path / "prompts.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"prompt": "\\ud800 lone"}\n')
        f.write(b"[" * 200_000 + b"]" * 200_000 + b"\n")
        f.write(b'{"prompt": "bad \xff byte"}\n')
        f.write(b'{"prompt": "def f(x):"}\n')
    assert read_prompts(str(path)) == [{"prompt": "def f(x):", "system": "", "history": []}]
