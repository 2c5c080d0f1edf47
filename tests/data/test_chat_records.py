"""Multi-turn chat records (TRL's ``messages`` convention) for SFT, preference, feedback
and prompts: normal form, malformed conversations counted and skipped, stored history."""
import json

import pytest

from kyx.data import chat, preference, records
from kyx.data.preference import SftElements, Stats
from kyx.data.preference_corpus import load_records


def m(role, content):
    return {"role": role, "content": content}


CONV = [m("system", "S"), m("user", "u1"), m("assistant", "a1"), m("user", "u2"),
        m("assistant", "a2")]


def test_normal_form_of_conversations():
    sft, _ = records.normalize("sft", {"messages": CONV, "negatives": ["bad"]})
    assert sft == {"prompt": "u2", "system": "S", "history": CONV[1:3], "response": "a2",
                   "negatives": ["bad"]}
    assert records.to_messages(sft, sft["response"]) == CONV
    # preference: explicit prompt messages + one-message completions, or TRL's implicit
    # prompt (whole conversations sharing their leading turns)
    explicit, _ = records.normalize("preference", {
        "prompt": CONV[:4], "chosen": [m("assistant", "a2")], "rejected": "no"})
    implicit, _ = records.normalize("preference", {
        "chosen": CONV, "rejected": CONV[:4] + [m("assistant", "no")], "strength": 2})
    assert explicit == {**implicit, "strength": -1}
    assert implicit["history"] == CONV[1:3] and implicit["chosen"] == "a2"
    kto, _ = records.normalize("feedback", {"prompt": CONV[1:2], "response": [m("assistant", "x")],
                                            "label": True})
    assert (kto["prompt"], kto["history"], kto["response"]) == ("u1", [], "x")
    assert records.parse_prompt_line(json.dumps({"messages": CONV[:4]})) == (
        {"prompt": "u2", "system": "S", "history": CONV[1:3]}, None)
    # single-turn records are unchanged apart from an empty history
    one, _ = records.normalize("sft", {"prompt": "p", "response": "r"})
    assert one["history"] == [] and one["prompt"] == "p"


@pytest.mark.parametrize("kind,obj,reason", [
    ("sft", {"messages": "hi"}, "bad_messages"),
    ("sft", {"messages": [m("user", "u"), {"role": "assistant"}]}, "bad_messages"),
    ("sft", {"messages": [m("user", "u"), m("tool", "t")]}, "bad_role"),
    ("sft", {"messages": [m("user", "u"), m("system", "s"), m("assistant", "a")]},
     "misplaced_system"),
    ("sft", {"messages": [m("assistant", "a"), m("user", "u"), m("assistant", "a")]},
     "roles_not_alternating"),
    ("sft", {"messages": [m("user", "u"), m("user", "u"), m("assistant", "a")]},
     "roles_not_alternating"),
    ("sft", {"messages": [m("user", " "), m("assistant", "a")]}, "empty_turn"),
    ("sft", {"messages": [m("system", "s")]}, "roles_not_alternating"),
    ("sft", {"messages": [m("user", "u")]}, "last_turn_not_assistant"),
    ("sft", {"messages": [m("user", "\ud800"), m("assistant", "a")]}, "invalid_unicode"),
    ("preference", {"prompt": [m("user", "u"), m("assistant", "a")], "chosen": "c",
                    "rejected": "r"}, "last_turn_not_user"),
    ("preference", {"prompt": "p", "chosen": [m("user", "c")], "rejected": "r"}, "bad_chosen"),
    ("preference", {"prompt": "p", "chosen": "c",
                    "rejected": [m("assistant", "r"), m("assistant", "r")]}, "bad_rejected"),
    ("preference", {"chosen": [m("user", "u"), m("assistant", "c")],
                    "rejected": [m("user", "v"), m("assistant", "r")]}, "no_common_prompt"),
    ("preference", {"chosen": [m("user", "u"), m("assistant", "c"), m("user", "w"),
                               m("assistant", "d")],
                    "rejected": [m("user", "u"), m("assistant", "r")]}, "bad_chosen"),
    ("feedback", {"prompt": "p", "response": [m("assistant", " ")], "label": 1},
     "empty_response"),
])
def test_malformed_conversations_have_reasons(kind, obj, reason):
    assert records.normalize(kind, obj) == (None, reason)


def test_jsonl_builder_keeps_history_and_skips_malformed_conversations(make_cfg, tmp_path):
    good = [{"messages": [m("user", f"u{i}"), m("assistant", f"a{i}"), m("user", f"v{i}"),
                          m("assistant", f"b{i}")]} for i in range(4)]
    lines = [json.dumps(r) for r in good[:2]] + [
        json.dumps({"messages": [m("user", "u"), m("user", "u")]}),
        json.dumps({"messages": [m("robot", "u"), m("assistant", "a")]}),
        json.dumps({"prompt": "p", "response": "r"}),
    ] + [json.dumps(r) for r in good[2:]]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = make_cfg(tmp_path / "data")
    cfg.records = preference.records_config()
    cfg.records.source, cfg.records.path = "jsonl", str(path)
    recs = load_records(cfg, "sft")
    assert recs.stats["skipped"] == {"roles_not_alternating": 1, "bad_role": 1}
    assert recs.stats["skipped_at"] == {"roles_not_alternating": ["chat.jsonl:3"],
                                        "bad_role": ["chat.jsonl:4"]}
    rows = sorted((src[i] for src in map(recs.source, ("train", "validation"))
                   for i in range(len(src))), key=lambda r: r["prompt"])
    assert len(rows) == 5
    assert rows[0] == {"prompt": "p", "system": "", "history": [], "response": "r",
                       "negatives": []}
    assert rows[1]["history"] == good[0]["messages"][:2] and rows[1]["response"] == "b0"


def test_sft_learns_every_assistant_turn_with_kyx_template(char_tokenizer):
    """kyx's template on a multi-turn SFT record: both assistant turns (and their end of
    turn) are learned, user turns and headers are not."""
    rec, _ = records.normalize("sft", {"messages": CONV[1:]})
    tmpl = chat.ChatTemplate(char_tokenizer)
    (row,) = SftElements(tmpl, 64, False, 0, "", Stats()).flat_map(rec)
    learned = row["targets"][row["mask"] > 0].tolist()
    eos = char_tokenizer.eos_id
    assert learned == char_tokenizer.encode("a1") + [eos] + char_tokenizer.encode("a2") + [eos]
    # truncation cuts earlier text from the left, keeping the final response whole
    enc = tmpl.encode(rec["prompt"], rec["response"], history=rec["history"],
                      learn_history=True, max_len=len(row["tokens"]) - 2)
    assert enc.truncated and enc.tokens[-3:].tolist() == char_tokenizer.encode("a2") + [eos]
