"""Corpus builders: idempotent array_record builds, hash splits, malformed files, tfds names."""
import glob
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kyx import data
from kyx.data import corpus as corpus_lib
from kyx.errors import ConfigError, DataError


def _texts_dir(tmp_path, n=8):
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(n):
        (d / f"doc{i}.txt").write_text(f"document {i}\n\tline two\n" * (i + 1))
    return d


def _records(corpus, split):
    src = corpus.source(split)
    return {r["path"].decode(): r["text"].decode() for r in (src[i] for i in range(len(src)))}


def test_split_is_deterministic_and_hash_based():
    paths = [f"pkg/mod{i}.py" for i in range(500)]
    train, val = corpus_lib.split_paths(paths, 0.1)
    assert 25 <= len(val) <= 75 and set(train).isdisjoint(val) and len(train) + len(val) == 500
    train_r, val_r = corpus_lib.split_paths(paths[::-1], 0.1)
    assert (set(train_r), set(val_r)) == (set(train), set(val))
    # A file's side depends only on its own path: adding files moves no one.
    train2, val2 = corpus_lib.split_paths(paths + ["extra/new.py"], 0.1)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    # Small corpora still get min_val_files validation files, and always one train file.
    assert len(corpus_lib.split_paths(paths[:10], 0.0, min_val_files=3)[1]) == 3
    assert len(corpus_lib.split_paths(paths[:2], 0.5, min_val_files=5)[0]) == 1


def test_build_is_idempotent_and_reads_back(tmp_path, monkeypatch, make_cfg):
    d = _texts_dir(tmp_path)
    cfg = make_cfg(tmp_path / "data", name="text_files", path=str(d))
    c1 = data.load_corpus(cfg)
    files = sorted(glob.glob(os.path.join(c1.builder.data_dir, "*.array_record*")))
    assert len(files) == 2
    mtimes = [os.stat(f).st_mtime_ns for f in files]

    def no_rebuild(*a, **k):
        raise AssertionError("corpus was rebuilt")
    monkeypatch.setattr(corpus_lib._FilesBuilder, "_split_generators", no_rebuild)
    c2 = data.load_corpus(cfg)
    assert c2.builder.data_dir == c1.builder.data_dir
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes
    train, val = _records(c2, "train"), _records(c2, "validation")
    assert set(train).isdisjoint(val) and len(train) + len(val) == 8 and len(val) == 2
    assert train.get("doc3.txt", val.get("doc3.txt")) == (d / "doc3.txt").read_text()
    assert c2.stats["files_kept"] == 8 and c2.stats["skipped_empty"] == 0
    # Editing a file gives a new fingerprint, hence a fresh build.
    monkeypatch.undo()
    (d / "doc0.txt").write_text("changed\n")
    assert data.load_corpus(cfg).builder.data_dir != c1.builder.data_dir


def test_malformed_files_are_counted_and_skipped(tmp_path, make_cfg):
    d = _texts_dir(tmp_path, n=4)
    (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (d / "binary.bin").write_bytes(bytes(range(256)))
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text(" \n\t\n")
    (d / ".hidden").write_text("ignored: hidden files are not listed\n")
    corpus = data.load_corpus(make_cfg(tmp_path / "data", name="text_files", path=str(d)))
    assert corpus.stats["files_seen"] == 8
    assert corpus.stats["skipped_invalid_utf8"] == 2 and corpus.stats["skipped_empty"] == 2
    assert sorted(corpus.stats["skipped_invalid_utf8_paths"]) == ["binary.bin", "latin1.txt"]
    kept = {**_records(corpus, "train"), **_records(corpus, "validation")}
    assert sorted(kept) == [f"doc{i}.txt" for i in range(4)]


def test_glob_and_errors(tmp_path, make_cfg):
    d = _texts_dir(tmp_path, n=4)
    (d / "notes.md").write_text("not matched\n")
    corpus = data.load_corpus(make_cfg(tmp_path / "data", name="text_files",
                                           path=str(d / "*.txt")))
    assert corpus.stats["files_seen"] == 4
    with pytest.raises(DataError, match="does not exist"):
        data.load_corpus(make_cfg(tmp_path / "data", name="text_files", path=str(d / "nope")))
    with pytest.raises(DataError, match="at least 2"):
        data.load_corpus(make_cfg(tmp_path / "data", name="text_files",
                                      path=str(d / "notes.md")))
    with pytest.raises(ConfigError, match="needs data.path"):
        data.load_corpus(make_cfg(tmp_path / "data", name="text_files"))
    with pytest.raises(ConfigError, match="Unknown data.name"):
        data.load_corpus(make_cfg(tmp_path / "data", name="wikipedia"))


def test_stdlib_corpus_capped(tmp_path, make_cfg):
    cfg = make_cfg(tmp_path, name="stdlib", max_files=40)
    corpus = data.load_corpus(cfg)
    assert corpus.stats["files_seen"] == 40
    assert corpus.stats["validation_files"] >= 2
    src = corpus.source("train")
    assert len(src) == corpus.stats["train_files"] and src[0]["path"].decode().endswith(".py")
    # The cap picks the same files every time (hash order, not listing order).
    assert data.load_corpus(cfg).builder.data_dir == corpus.builder.data_dir


class KyxTestTexts(tfds.core.GeneratorBasedBuilder):
    """A registered tfds dataset with a differently named text feature, incl. bad records."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"body": tfds.features.Text(), "id": np.int64}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20)}

    def _generate_examples(self, n):
        for i in range(n):
            body = {3: b"", 5: b"\xff\xfe bad"}.get(i, f"record {i}\nvalue = {i * 7}\n")
            yield i, {"body": body, "id": i}


def test_tfds_dataset_by_name(tmp_path, char_tokenizer, make_cfg):
    KyxTestTexts(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    cfg = make_cfg(tmp_path, name="tfds:kyx_test_texts", text_feature="body",
                       train_split="train[:15]", eval_split="train[15:]", seq_len=16)
    corpus = data.load_corpus(cfg)
    assert len(corpus.source(cfg.train_split)) == 15 and len(corpus.source(cfg.eval_split)) == 5
    val = corpus.source(cfg.eval_split)
    expected = "".join(val[i]["body"].decode() for i in range(len(val)))
    batches = list(data.make_iterator(cfg, corpus, char_tokenizer, "validation"))
    assert char_tokenizer.decode(np.concatenate([b["tokens"].ravel() for b in batches])) == expected
    it = data.make_iterator(cfg, corpus, char_tokenizer, "train")
    for _ in range(10):
        next(it)
    skipped = it.stats["skipped_while_reading"]
    assert skipped["empty"] >= 1 and skipped["invalid_utf8"] >= 1
    with pytest.raises(ConfigError, match="no feature 'text'"):
        data.load_corpus(make_cfg(tmp_path, name="tfds:kyx_test_texts"))
    with pytest.raises(DataError, match="Cannot read split"):
        corpus.source("test")
