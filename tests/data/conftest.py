"""Data-test fixtures: small corpora, a char tokenizer, configs, a prepared small setup.

Helpers are handed out as fixtures because tests run with --import-mode=importlib.
"""
import os
import shutil
import sysconfig

import pytest

from kyx import data
from kyx.data.corpus import Corpus

# Real, varied text for tokenizer training: a few standard-library modules.
STDLIB_FILES = ("textwrap.py", "json/__init__.py", "json/decoder.py", "json/encoder.py",
                "bisect.py", "heapq.py", "shlex.py", "fnmatch.py", "colorsys.py",
                "keyword.py", "copy.py", "glob.py")


def copy_stdlib_files(dst, names=STDLIB_FILES):
    """Copies a few stdlib modules into ``dst`` (flattened names) and returns ``dst``."""
    src = sysconfig.get_paths()["stdlib"]
    os.makedirs(dst, exist_ok=True)
    for name in names:
        shutil.copy(os.path.join(src, name), os.path.join(dst, name.replace("/", "_")))
    return dst


class CharTokenizer:
    """id = code point + 4; pad 0, unk 1, bos 2, eos 3. Makes packing hand-checkable."""

    vocab_size, pad_id, bos_id, eos_id = 1024, 0, 2, 3

    def encode(self, text):
        return [ord(c) + 4 for c in text]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return "".join(chr(i - 4) for i in ids if i > 3)


def memory_corpus(train, validation=None):
    """A Corpus over in-memory records (lists of {'text': ...}); no tfds involved."""
    corpus = Corpus(name="memory", builder=None, stats={"in_memory": True})
    corpus._sources.update(train=list(train), validation=list(validation or train))
    return corpus


def small_config(data_dir, **overrides):
    cfg = data.default_config()
    cfg.data_dir = str(data_dir)
    cfg.tokenizer.vocab_size = 512
    cfg.seq_len, cfg.batch_size = 64, 4
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


@pytest.fixture
def make_cfg():
    """small_config(data_dir, **overrides) -> data config with vocab 512, seq 64, batch 4."""
    return small_config


@pytest.fixture
def make_memory_corpus():
    return memory_corpus


@pytest.fixture
def stdlib_copy():
    """copy_stdlib_files(dst) -> dst holding 12 stdlib modules."""
    return copy_stdlib_files


@pytest.fixture(scope="session")
def small_setup(tmp_path_factory):
    """(cfg, corpus, tokenizer) for a text_files corpus of 12 stdlib modules, vocab 512."""
    root = tmp_path_factory.mktemp("small")
    cfg = small_config(root / "data", name="text_files",
                       path=copy_stdlib_files(str(root / "texts")), min_val_files=2)
    corpus, tok = data.prepare(cfg)
    return cfg, corpus, tok
