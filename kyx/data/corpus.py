"""Text corpora as tensorflow-datasets builders that write array_record files.

Two builders produce examples ``{'text': str, 'path': str}`` in a ``train``
and a ``validation`` split:

* ``kyx_text_files``: the files under a directory (hidden entries skipped) or
  matching a glob (``**`` recurses);
* ``kyx_stdlib``: the running Python's standard-library ``.py`` sources
  (tests included, site-packages excluded; about 30 MB), the default corpus,
  so the main job needs no download.

A file goes to ``validation`` when a hash of its relative path falls below
``val_fraction`` (topped up to ``min_val_files`` by lowest hash), so the split
does not depend on file order or on the other files. Files that are not valid
UTF-8, or are empty or whitespace-only, are skipped; their counts are stored in
the dataset's metadata and exposed as ``Corpus.stats``.

Each distinct (file set, sizes, mtimes, options) gets its own tfds config name,
so building is idempotent: a second call reuses the array_record files under
``data_dir``. Any prepared tfds dataset with a text feature can be used instead
(``name='tfds:<dataset>'``); it is read through array_record random access.
TensorFlow is not needed for any of this.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Mapping
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from kyx import logs
from kyx.build_lock import exclusive_build
from kyx.data import dedup
from kyx.errors import ConfigError, DataError
from kyx.logs import get_logger

log = get_logger(__name__)

SPLITS = ("train", "validation")
_MAX_LISTED_SKIPS = 20  # skipped paths kept in metadata, per reason


def default_data_dir() -> str:
    """``$KYX_DATA_DIR``, else ``~/.cache/kyx/data``."""
    return os.environ.get("KYX_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kyx", "data")


def path_hash(relpath: str) -> float:
    """Uniform value in [0, 1) from a relative path; drives the split and the file cap."""
    digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def cap_files(relpaths: list[str], max_files: int) -> list[str]:
    """Keeps ``max_files`` paths (0 = all), chosen by path hash so the subset is spread out."""
    if max_files and len(relpaths) > max_files:
        relpaths = sorted(relpaths, key=path_hash)[:max_files]
    return sorted(relpaths)


def split_paths(relpaths: list[str], val_fraction: float,
                min_val_files: int = 1) -> tuple[list[str], list[str]]:
    """Returns (train, validation) relative paths, deterministically from path hashes."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if len(relpaths) < 2:
        raise DataError(
            f"Need at least 2 usable text files to make train and validation splits, "
            f"found {len(relpaths)}. Add files or point `path` at a larger corpus.")
    n_val = sum(path_hash(p) < val_fraction for p in relpaths)
    n_val = min(max(n_val, min_val_files, 1), len(relpaths) - 1)
    val = set(sorted(relpaths, key=path_hash)[:n_val])
    return [p for p in relpaths if p not in val], [p for p in relpaths if p in val]


def _walk(root: str, keep_file, skip_dir) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not skip_dir(d))
        for f in filenames:
            if keep_file(f):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def list_text_files(path: str) -> tuple[str, list[str]]:
    """Returns (root, sorted relative paths) for a directory or a glob pattern."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return path, _walk(path, lambda f: not f.startswith("."), lambda d: d.startswith("."))
    if not glob.has_magic(path):
        if os.path.isfile(path):
            return os.path.dirname(path), [os.path.basename(path)]
        raise DataError(f"Text corpus path {path!r} does not exist; "
                        f"give a directory, a file or a glob.")
    parts = path.split(os.sep)
    root = os.sep.join(parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]) or os.sep
    files = [m for m in glob.glob(path, recursive=True) if os.path.isfile(m)]
    if not files:
        raise DataError(f"Glob {path!r} matched no files.")
    return root, sorted(os.path.relpath(m, root).replace(os.sep, "/") for m in files)


def list_stdlib_files() -> tuple[str, list[str]]:
    """Returns (stdlib root, sorted relative paths of its .py files), without site-packages."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return root, _walk(root, lambda f: f.endswith(".py"), lambda d: d in skip or d.startswith("."))


def read_text(filename: str) -> tuple[str | None, str | None]:
    """Returns (text, None) or (None, reason) with reason 'invalid_utf8' or 'empty'."""
    with open(filename, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    if not text or text.isspace():  # no stripped copy of a huge text
        return None, "empty"
    return text, None


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A kyx builder of local data (corpora, post-training records): nothing to download.

    tfds's own "Downloading and preparing dataset Unknown size ..." and "... downloaded
    and prepared" lines say nothing true about local data, so they only appear with
    ``kyx --verbose``; ``prepare`` logs what is built and where.
    """

    # No checksums/metadata files live beside this code. Also sidesteps tfds 4.9
    # importing the undeclared `importlib_resources` backport to locate them.
    code_path = None

    def _log_download_bytes(self) -> None:
        if logs.verbose():
            super()._log_download_bytes()

    def _log_download_done(self) -> None:
        if logs.verbose():
            super()._log_download_done()


def make_builder(builder_cls, **kwargs):
    """``builder_cls(**kwargs)`` without tfds's warning about a config that is not in
    BUILDER_CONFIGS (each kyx config is named by a fingerprint of its inputs)."""
    with logs.quiet_libraries():
        return builder_cls(**kwargs)


def _show_progress_bars() -> None:
    """tfds progress bars only on a terminal (no carriage returns in log files)."""
    tfds.display_progress_bar(sys.stderr.isatty())


def prepare(builder, data_dir: str, what: str) -> None:
    """Build a LocalBuilder's dataset under ``data_dir`` unless it is already prepared,
    with one kyx log line; tfds's warnings about a dataset seen for the first time
    (e.g. "Variant folder ... has no dataset_info.json") only with ``kyx --verbose``."""
    with logs.quiet_libraries():
        if builder.is_prepared():
            return
        with exclusive_build(os.path.join(data_dir, builder.name, builder.builder_config.name),
                             f"{what} {builder.info.full_name}"):
            if builder.is_prepared():   # built meanwhile by the process that held the lock
                builder.info.read_from_directory(builder.data_dir)   # its splits and stats
                return
            log.info("Building %s %s into %s", what, builder.info.full_name, builder.data_dir)
            _show_progress_bars()
            builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
    """Which files to read and how to split them. ``path`` is unused by kyx_stdlib."""

    path: str = ""
    max_files: int = 0
    val_fraction: float = 0.02
    min_val_files: int = 2
    dedup: str = "{}"  # JSON of the data.dedup section (kyx/data/dedup.py)


class _FilesBuilder(LocalBuilder, skip_registration=True):
    """Shared logic: list files, drop malformed ones, split by path hash."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SKIP_LOG_LEVEL = logging.WARNING  # level of the "skipped N files" line

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "path": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(),
        )

    def list_files(self) -> tuple[str, list[str]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root, relpaths = self.list_files()
        relpaths = cap_files(relpaths, cfg.max_files)
        kept, texts, skipped = [], [], {"invalid_utf8": [], "empty": []}
        for rel in relpaths:
            text, reason = read_text(os.path.join(root, rel))
            if text is None:
                skipped[reason].append(rel)
            else:
                kept.append(rel)
                texts.append(text)
        dropped = dedup.duplicates(texts, ml_collections.ConfigDict(json.loads(cfg.dedup)))
        del texts
        dedup_stats = dedup.summary(dropped, kept)
        kept = [rel for i, rel in enumerate(kept) if i not in dropped]
        train, val = split_paths(kept, cfg.val_fraction, cfg.min_val_files)
        stats = {
            "root": root, "files_seen": len(relpaths), "files_kept": len(kept),
            "train_files": len(train), "validation_files": len(val),
            **{f"skipped_{k}": len(v) for k, v in skipped.items()},
            **{f"skipped_{k}_paths": v[:_MAX_LISTED_SKIPS] for k, v in skipped.items()},
            **dedup_stats,
        }
        self.info.metadata.update(stats)
        if skipped["invalid_utf8"] or skipped["empty"]:
            log.log(self.SKIP_LOG_LEVEL,
                    "Corpus %s: skipped %d non-UTF-8 and %d empty files of %d (e.g. %s).",
                    self.name, stats["skipped_invalid_utf8"], stats["skipped_empty"],
                    len(relpaths), (skipped["invalid_utf8"] + skipped["empty"])[:3])
        if dropped:
            log.info("Corpus %s: removed %d exact and %d near duplicates of %d files.", self.name,
                     dedup_stats["dedup_exact"], dedup_stats["dedup_near"], len(relpaths))
        return {"train": self._generate_examples(root, train),
                "validation": self._generate_examples(root, val)}

    def _generate_examples(self, root: str, relpaths: list[str]):
        for rel in relpaths:
            text, _ = read_text(os.path.join(root, rel))
            if text is not None:  # the file may have changed since it was listed
                yield rel, {"text": text, "path": rel}


class KyxTextFiles(_FilesBuilder):
    """Local text files: every file under a directory, or matching a glob."""

    def list_files(self):
        if not self.builder_config.path:
            raise ConfigError("name='text_files' needs `path`: a directory, a file or a glob.")
        return list_text_files(self.builder_config.path)


class KyxStdlib(_FilesBuilder):
    """The running Python's standard-library .py sources (no download needed)."""

    # expected, not a problem: empty __init__.py files and the test suite's deliberately
    # non-UTF-8 source-encoding fixtures
    SKIP_LOG_LEVEL = logging.INFO

    def list_files(self):
        return list_stdlib_files()


@dataclasses.dataclass
class Corpus:
    """A built or prepared tfds dataset, read by split through array_record random access."""

    name: str
    builder: Any  # tfds.core.DatasetBuilder
    text_feature: str = "text"
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fingerprint: str = ""
    _sources: dict = dataclasses.field(default_factory=dict, repr=False)

    def source(self, split: str):
        """Random-access source for ``split`` (tfds split syntax such as 'train[:10%]' works)."""
        if split not in self._sources:
            try:
                self._sources[split] = self.builder.as_data_source(split=split)
            except Exception as e:  # tfds raises several types for bad splits/formats
                raise DataError(
                    f"Cannot read split {split!r} of {self.builder.info.full_name} as array_record "
                    f"(available splits: {sorted(self.builder.info.splits)}; file format "
                    f"{self.builder.info.file_format}). Rebuild it with file_format='array_record' "
                    f"or pick another split. Cause: {e}") from e
        return self._sources[split]


def fingerprint(obj: Any) -> str:
    """Short stable digest of JSON-able data (builder configs, dataset names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[-24:].strip("_") or "files"


def _build_local(builder_cls, cfg, root: str, relpaths: list[str], data_dir: str) -> Corpus:
    stat = [(r, st.st_size, st.st_mtime_ns) for r in cap_files(relpaths, cfg.max_files)
            for st in [os.stat(os.path.join(root, r))]]
    dedup_json = json.dumps(dict(cfg.get("dedup", dedup.default_config())), sort_keys=True)
    options = [cfg.max_files, cfg.val_fraction, cfg.min_val_files, dedup_json]
    fp = fingerprint([builder_cls.__name__, root, stat, options, builder_cls.VERSION.major])
    name = f"{_slug(os.path.basename(root))}_{fp}"
    config = FilesConfig(name=name, path=cfg.path, max_files=cfg.max_files,
                         val_fraction=cfg.val_fraction, min_val_files=cfg.min_val_files,
                         dedup=dedup_json, description=f"{len(stat)} files under {root}")
    builder = make_builder(builder_cls, config=config, data_dir=data_dir,
                           file_format="array_record")
    prepare(builder, data_dir, "corpus")
    stats = {k: v for k, v in builder.info.metadata.items()}
    return Corpus(name=cfg.name, builder=builder, text_feature="text", stats=stats,
                  fingerprint=f"{builder.info.full_name}")


def _load_tfds(cfg, dataset: str) -> Corpus:
    data_dir = cfg.data_dir or None  # None: tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    try:
        builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            with exclusive_build(os.path.join(builder.data_dir_root, builder.name),
                                 f"tfds dataset {dataset}"):
                if builder.is_prepared():
                    builder.info.read_from_directory(builder.data_dir)
                else:
                    _show_progress_bars()
                    builder.download_and_prepare(file_format="array_record")
    except Exception as e:
        raise DataError(
            f"Cannot load tfds dataset {dataset!r} (data_dir={data_dir}): {e}. Prepare it first, "
            f"e.g. `tfds build {dataset} --file_format=array_record`, or set data.data_dir.") from e
    features = builder.info.features
    if cfg.text_feature not in features:
        raise ConfigError(f"tfds dataset {dataset!r} has no feature {cfg.text_feature!r}; "
                          f"set data.text_feature to one of {sorted(features)}.")
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    return Corpus(name=cfg.name, builder=builder, text_feature=cfg.text_feature,
                  stats={"splits": splits},
                  fingerprint=f"tfds:{builder.info.full_name}:{fingerprint(splits)}")


def load_corpus(cfg) -> Corpus:
    """Builds (once) or loads the corpus named by ``cfg.name``; ``cfg`` is the data config."""
    name = cfg.name
    if name.startswith("tfds:"):
        return _load_tfds(cfg, name[len("tfds:"):])
    data_dir = cfg.data_dir or default_data_dir()
    if name == "stdlib":
        root, relpaths = list_stdlib_files()
        return _build_local(KyxStdlib, cfg, root, relpaths, data_dir)
    if name == "text_files":
        if not cfg.path:
            raise ConfigError("data.name='text_files' needs data.path: "
                              "a directory, a file or a glob.")
        root, relpaths = list_text_files(cfg.path)
        return _build_local(KyxTextFiles, cfg, root, relpaths, data_dir)
    raise ConfigError(f"Unknown data.name {name!r}; "
                      f"use 'stdlib', 'text_files' or 'tfds:<dataset>'.")
