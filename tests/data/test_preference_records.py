"""Post-training records: JSONL validation, the mined default datasets, the pipelines."""
import json

import numpy as np
import pytest

from kyx.data import chat, mining, preference, records
from kyx.data.preference_corpus import load_records
from kyx.errors import ConfigError, DataError

RICH = ("textwrap.py", "shlex.py", "heapq.py", "bisect.py", "fnmatch.py", "calendar.py",
        "random.py", "statistics.py", "fractions.py", "tokenize.py")


def _cfg(make_cfg, tmp_path, **records_overrides):
    cfg = make_cfg(tmp_path / "data")
    cfg.records = preference.records_config()
    for k, v in records_overrides.items():
        cfg.records[k] = v
    return cfg


def _write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return str(path)


def test_parse_line_reasons():
    ok, _ = records.parse_line("preference", '{"prompt": "p", "chosen": "a", "rejected": "b", '
                                             '"strength": "significantly better"}')
    assert ok == {"prompt": "p", "chosen": "a", "rejected": "b", "system": "", "strength": 3,
                  "history": []}
    cases = {
        ("sft", "{bad"): "invalid_json",
        ("sft", "[1]"): "not_an_object",
        ("sft", '{"prompt": "p"}'): "missing_response",
        ("sft", '{"prompt": "p", "response": 3}'): "non_text_response",
        ("sft", '{"prompt": " ", "response": "r"}'): "empty_prompt",
        ("sft", '{"prompt": "p", "response": "r", "negatives": "x"}'): "bad_negatives",
        ("preference", '{"prompt": "p", "chosen": "a", "rejected": "a"}'): "identical_pair",
        ("preference", '{"prompt": "p", "chosen": "a", "rejected": "b", "strength": 9}'):
            "bad_strength",
        ("feedback", '{"prompt": "p", "response": "r", "label": "maybe"}'): "bad_label",
        ("feedback", '{"prompt": "p", "response": "r"}'): "bad_label",
    }
    for (kind, line), reason in cases.items():
        assert records.parse_line(kind, line) == (None, reason), line
    fb, _ = records.parse_line("feedback", '{"prompt": "p", "response": "r", "label": false}')
    assert fb["label"] == 0


def test_jsonl_builder_counts_and_skips_malformed(make_cfg, tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}", "negatives": [f"n{i}", f"r{i}"]}
            for i in range(6)]
    path = _write(tmp_path / "sft.jsonl", rows[:3] + ["not json", {"prompt": "x"}, ""] + rows[3:])
    evalp = _write(tmp_path / "val.jsonl", [{"prompt": "v", "response": "w"}, {"oops": 1}])
    cfg = _cfg(make_cfg, tmp_path, source="jsonl", path=path, eval_path=evalp)
    recs = load_records(cfg, "sft")
    st = recs.stats
    assert st["records_seen"] == 10 and st["records_kept"] == 7
    assert st["skipped"] == {"invalid_json": 1, "missing_response": 1, "missing_prompt": 1}
    assert st["skipped_at"]["invalid_json"] == ["sft.jsonl:4"]
    train = recs.source("train")
    assert len(train) == 6 and len(recs.source("validation")) == 1
    got = sorted((train[i]["prompt"], tuple(train[i]["negatives"])) for i in range(6))
    assert got[0] == ("p0", ("n0",))  # a negative equal to the response is dropped
    again = load_records(cfg, "sft")  # cached: same prepared dataset
    assert again.fingerprint == recs.fingerprint


def test_jsonl_hash_split_and_errors(make_cfg, tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}", "label": i % 2} for i in range(40)]
    cfg = _cfg(make_cfg, tmp_path, source="jsonl", path=_write(tmp_path / "f.jsonl", rows),
               val_fraction=0.2)
    recs = load_records(cfg, "feedback")
    n_train, n_val = len(recs.source("train")), len(recs.source("validation"))
    assert n_train + n_val == 40 and 1 <= n_val < 20
    empty = _cfg(make_cfg, tmp_path, source="jsonl", path=_write(tmp_path / "e.jsonl", ["{}"]))
    with pytest.raises(DataError, match="no valid feedback records"):
        load_records(empty, "feedback")
    with pytest.raises(ConfigError, match="records.path"):
        load_records(_cfg(make_cfg, tmp_path, source="jsonl"), "sft")


def test_mined_records_are_deterministic(make_cfg, tmp_path, stdlib_copy):
    texts = stdlib_copy(str(tmp_path / "texts"), RICH)
    views = []
    for run in ("a", "b"):  # two independent builds into separate data dirs
        cfg = _cfg(make_cfg, tmp_path / run, max_train=40, max_eval=8)
        cfg.name, cfg.path = "text_files", texts
        recs = load_records(cfg, "preference")
        src = recs.source("train")
        views.append(sorted(json.dumps(src[i], sort_keys=True) for i in range(len(src))))
        assert len(src) == 40 and 2 <= len(recs.source("validation")) <= 8
    assert views[0] == views[1]
    rec = json.loads(views[0][0])
    assert rec["strength"] in (2, 3) and rec["chosen"] != rec["rejected"]


def test_mining_views():
    src = "def f(x):\n    '''Double x.'''\n    y = x * 2\n    return y\n\n" \
          "def g(a):\n    '''Negate a.'''\n    b = -a\n    c = b\n    return c\n"
    fns = mining.mine_source(src, "m.py")
    assert [f.prompt for f in fns] == ['def f(x):\n    """Double x."""',
                                       'def g(a):\n    """Negate a."""']
    assert fns[0].lines == ["    y = x * 2", "    return y"]
    assert mining.repeat(fns[0]) == "\n".join(["    y = x * 2"] * 3)
    assert mining.elsewhere(fns, 0) == "    b = -a\n    c = b"
    sft = mining.view("sft", fns, 0)
    assert sft["response"] == fns[0].response and len(sft["negatives"]) == 2
    assert mining.view("feedback", fns, 1)["label"] in (0, 1)
    assert mining.retrieval_pair(fns[1]) == ("Negate a.", "def g(a):\n    b = -a\n    c = b\n"
                                                          "    return c")
    assert mining.mine_source("def broken(:\n", "x.py") == []


class _Records:
    def __init__(self, kind, train, validation):
        self.kind, self.fingerprint = kind, f"memory_{kind}"
        self._splits = {"train": train, "validation": validation}

    def source(self, split):
        return self._splits[split]


def test_sft_iterator_packs_whole_sequences_and_resumes(make_cfg, tmp_path, char_tokenizer):
    rows = [{"prompt": f"prompt {i}", "response": f"response {i}" * (1 + i % 3),
             "negatives": [f"response {i}!!", f"other {i}"], "system": ""} for i in range(30)]
    cfg = _cfg(make_cfg, tmp_path)
    cfg.seq_len, cfg.batch_size = 96, 4
    recs, tmpl = _Records("sft", rows, rows[:5]), chat.ChatTemplate(char_tokenizer)
    it = preference.make_sft_iterator(cfg, recs, tmpl, "train", negatives=True)
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    more = [next(it) for _ in range(2)]
    b = first[0]
    assert set(b) == set(preference.SFT_AXES)
    for pre, mask in (("", "loss_mask"), ("neg_", "neg_mask")):
        for r in range(4):  # segments start at BOS, positions restart, nothing split
            seg = b[pre + "segment_ids"][r]
            for s in range(1, seg.max() + 1):
                idx = np.nonzero(seg == s)[0]
                assert b[pre + "tokens"][r, idx[0]] == char_tokenizer.bos_id
                assert b[pre + "positions"][r, idx].tolist() == list(range(len(idx)))
        assert b[mask].sum() > 0
        assert np.all(b[pre + "tokens"][b[pre + "segment_ids"] == 0] == 0)
    assert set(np.unique(b["neg_index"][b["neg_mask"] > 0])) == {1, 2}
    it2 = preference.make_sft_iterator(cfg, recs, tmpl, "train", negatives=True)
    it2.set_state(state)
    for want in more:
        got = next(it2)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # the positive rows do not depend on whether negatives are used
    plain = preference.make_sft_iterator(cfg, recs, tmpl, "train")
    for want in first:
        got = next(plain)
        assert got["neg_mask"].sum() == 0
        for k in ("tokens", "targets", "segment_ids", "positions", "loss_mask"):
            np.testing.assert_array_equal(got[k], want[k])
    one = preference.make_sft_iterator(cfg, recs, tmpl, "train", negatives=True,
                                       max_negatives=1)
    assert set(np.unique(next(one)["neg_index"])) <= {0, 1}
    # eval: one pass, the shorter stream padded
    evals = list(preference.make_sft_iterator(cfg, recs, tmpl, "validation", negatives=True))
    assert evals and sum(e["loss_mask"].sum() > 0 for e in evals) >= 1
    with pytest.raises(ConfigError, match="negatives"):
        bare = [{**r, "negatives": []} for r in rows]
        preference.make_sft_iterator(cfg, _Records("sft", bare, bare), tmpl, "train",
                                     negatives=True)


def test_pair_iterator_weights_reference_and_kto_pairs(make_cfg, tmp_path, char_tokenizer):
    rows = [{"prompt": f"p{i}", "response": f"resp{i}", "label": i % 2, "system": ""}
            for i in range(5)]
    cfg = _cfg(make_cfg, tmp_path)
    cfg.seq_len, cfg.batch_size, cfg.eval_batches = 48, 4, 0
    recs, tmpl = _Records("feedback", rows, rows), chat.ChatTemplate(char_tokenizer)
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    batches = list(preference.make_pair_iterator(cfg, recs, tmpl, "validation",
                                                 ref_table=table, keep_index=True))
    assert len(batches) == 2
    last = batches[1]
    assert last["weight"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert last["index"][0] == 4
    np.testing.assert_array_equal(last["ref_response_logps"][:1], [8.0])
    np.testing.assert_array_equal(last["ref_kl_logps"][:1], [9.0])
    # the KL sequence pairs prompt i with the response of record (i + 1) mod N
    first = batches[0]
    kl = first["kl_tokens"][0][first["kl_segment_ids"][0] > 0]
    text = char_tokenizer.decode(kl)
    assert "p0" in text and text.endswith("resp1")
    assert set(first) == set(preference.pair_axes("feedback", True)) | {"index"}
    train = preference.make_pair_iterator(cfg, recs, tmpl, "train", ref_columns=True)
    b = next(train)
    assert b["weight"].tolist() == [1.0] * 4 and np.all(b["ref_response_logps"] == 0)
