"""Building a corpus or records is quiet by default: one kyx line, no tfds "Downloading
and preparing dataset Unknown size", no absl warnings, no progress-bar control characters
when stderr is not a terminal; `kyx --verbose` brings tfds's lines back."""
import json
import logging

from kyx import data, logs
from kyx.data import preference
from kyx.data.preference_corpus import load_records

TFDS_LINES = ("Downloading and preparing dataset", "downloaded and prepared")


def _texts(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(4):
        (d / f"doc{i}.txt").write_text(f"document {i}\n" * (i + 1))
    return str(d)


def test_corpus_and_records_build_quietly(tmp_path, make_cfg, quiet, capfd, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    corpus = data.load_corpus(make_cfg(tmp_path / "data", name="text_files",
                                       path=_texts(tmp_path)))
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n"
                             for i in range(8)))
    cfg = make_cfg(tmp_path / "data")
    cfg.records = preference.records_config()
    cfg.records.source, cfg.records.path = "jsonl", str(jsonl)
    load_records(cfg, "sft")
    out, err = capfd.readouterr()
    assert corpus.stats["files_kept"] == 4
    assert f"Building corpus {corpus.builder.info.full_name}" in out
    assert "Building sft records" in out
    for line in TFDS_LINES:
        assert line not in out + err
    assert "\r" not in err and "\x1b" not in err  # stderr is not a tty here
    assert [r.getMessage() for r in caplog.records
            if r.name == "absl" and r.levelno >= logging.WARNING] == []


def test_verbose_shows_tfds_lines(tmp_path, make_cfg, quiet, capfd, caplog):
    logs.set_verbose(True)
    data.load_corpus(make_cfg(tmp_path / "data", name="text_files", path=_texts(tmp_path)))
    out, err = capfd.readouterr()
    assert all(line in out for line in TFDS_LINES)
    assert any(r.name == "absl" and r.levelno == logging.WARNING
               and r.getMessage().startswith("Variant folder") for r in caplog.records)
    assert "\r" not in err  # progress bars only on a terminal, verbose or not
