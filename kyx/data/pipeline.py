"""Input pipeline: training rows (``data.sampling``) and packed validation batches.

``data.sampling='stratified'`` (default) or ``'iid'``: training rows are fixed-length
windows of the split's pre-tokenized token cache (kyx/data/token_cache.py) in a seeded
global permutation (kyx/data/windows.py): no tokenization while training, and consecutive
rows come from unrelated parts of the corpus; 'stratified' also gives every batch one
window of each difficulty stratum (on `tiny` 1.5x less step-to-step loss noise than
'iid' at the same eval loss; docs/data.md).

``data.sampling='packed'``, and every validation pass: the grain pipeline below. Training reads the train split in a seeded index shuffle (a new permutation
each epoch), tokenizes each document as BOS + text + EOS, then concatenates
documents and cuts them into rows of ``seq_len`` (grain's
``ConcatThenSplitIterDataset``): a document that does not fit is continued in
the next row, so rows carry no padding. Evaluation makes one ordered pass over
the validation split; its last row and last batch are zero-padded.

Every batch is a dict of ``[B_local, seq_len]`` arrays::

  tokens       int32   token ids; pad_id where segment_ids == 0
  targets      int32   tokens[t + 1] if it is in the same segment, else pad_id
  segment_ids  int32   1, 2, 3, ... per document piece in the row; 0 = padding
  positions    int32   0, 1, 2, ... within each segment (restarts per piece)
  loss_mask    float32 1.0 where targets is a real next token of the same
                       document piece; 0.0 on each segment's last token and padding

A document cut across rows becomes one segment per row, and the token at the
cut has no target (its next token starts the next row). The global batch is
built identically on every process; process ``i`` of ``n`` keeps rows
``[i * B / n, (i + 1) * B / n)``, so the stream does not depend on the number
of processes and one iterator state serves them all.

Iterators are grain ``DatasetIterator``s: ``get_state()`` returns a small
JSON-able dict and ``set_state()`` restores it so that the following batches
are exactly those an uninterrupted run would produce.
"""
from __future__ import annotations

import os
from typing import Any

import grain
from absl import flags
import ml_collections
import numpy as np

from kyx.build_lock import exclusive_build
from kyx.data import bpe, dedup, mixture, token_cache, windows
from kyx.data.corpus import Corpus, default_data_dir, fingerprint, load_corpus
from kyx.data.encode import ReadStats, Tokenize, next_token_targets, record_text  # noqa: F401
from kyx.data.tokenizer import SentencePieceTokenizer, Tokenizer, train_sentencepiece
from kyx.errors import ConfigError, DataError
from kyx.logs import get_logger
from kyx.registry import Registry

log = get_logger(__name__)

ROLES = ("train", "validation")


def default_config() -> ml_collections.ConfigDict:
    """Data config; ``batch_size`` is the global batch (all processes together)."""
    c = ml_collections.ConfigDict()
    c.name = "stdlib"          # 'stdlib' | 'text_files' | 'tfds:<dataset>[/config][:version]'
    c.path = ""                # text_files: directory, file or glob
    c.data_dir = ""            # '' = $KYX_DATA_DIR or ~/.cache/kyx/data (tfds: tfds default)
    c.text_feature = "text"    # tfds datasets: which feature holds the text
    c.train_split = "train"    # tfds split names; slicing such as 'train[:98%]' works
    c.eval_split = "validation"
    c.val_fraction = 0.02      # local corpora: share of files (by path hash) in validation
    c.min_val_files = 2
    c.max_files = 0            # local corpora: cap on files read (0 = all)
    c.seq_len = 512
    c.batch_size = 16
    c.seed = 0
    c.sampling = "stratified"  # train rows: 'stratified' | 'iid' windows of the token cache | 'packed' (grain)
    c.cache_workers = 2        # processes encoding the token cache (0 = in-process)
    c.num_epochs = 0           # train: 0 = repeat forever
    c.eval_batches = 0         # validation: 0 = one full pass, else at most this many
    c.worker_count = 0         # grain worker processes (0 = in-process)
    c.read_threads = 2         # threads tokenizing documents ahead of packing
    c.prefetch = 32            # documents tokenized ahead, per iterator
    c.dedup = dedup.default_config()  # local corpora: exact + MinHash near-duplicate removal
    # {label: {name, path, ..., weight}}: several corpora sampled by weight (kyx/data/mixture.py)
    c.mixture = ml_collections.ConfigDict()
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "sentencepiece"  # trained tokenizer: TOKENIZER_KINDS (docs/data.md)
    c.tokenizer.vocab_size = 4096
    c.tokenizer.model_path = ""       # existing .model file; '' = train (cached) on the corpus
    c.tokenizer.sample_bytes = 8 << 20  # training text read from the train split
    c.tokenizer.split_digits = True   # bpe kinds: each digit its own word (sentencepiece: always)
    c.tokenizer.whitespace = "runs"   # bpe kinds: 'runs' (indentation tokens) | 'single'
    return c


class MakeBatch:
    """Stacks packed rows, zero-pads to the global batch, keeps this process's rows."""

    def __init__(self, rows: int, pad_id: int, process_index: int, process_count: int):
        local = rows // process_count
        self.rows, self.pad_id = rows, pad_id
        self.keep = slice(process_index * local, (process_index + 1) * local)

    def __call__(self, elements: list[dict]) -> dict[str, np.ndarray]:
        def stack(key):
            x = np.stack([e[key] for e in elements]).astype(np.int32)
            if len(x) < self.rows:
                x = np.concatenate([x, np.zeros((self.rows - len(x), x.shape[1]), np.int32)])
            return x[self.keep]

        segment_ids, positions = stack("tokens_segment_ids"), stack("tokens_positions")
        tokens = np.where(segment_ids == 0, self.pad_id, stack("tokens")).astype(np.int32)
        targets, loss_mask = next_token_targets(tokens, segment_ids, self.pad_id)
        return {"tokens": tokens, "targets": targets, "segment_ids": segment_ids,
                "positions": positions, "loss_mask": loss_mask}


class BatchIterator(grain.DatasetIterator):
    """The pipeline's iterator: grain state for checkpoints plus ``stats``."""

    def __init__(self, parent: grain.DatasetIterator, read_stats: ReadStats, corpus: Corpus):
        super().__init__(parent)
        self._read_stats, self._corpus_stats = read_stats, dict(corpus.stats)

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)

    def close(self) -> None:
        if hasattr(self._parent, "close"):
            self._parent.close()

    @property
    def stats(self) -> dict[str, Any]:
        """{'corpus': build-time stats, 'skipped_while_reading': {reason: count}}."""
        return {"corpus": self._corpus_stats,
                "skipped_while_reading": dict(self._read_stats.counts)}


def _check(cfg, process_index: int, process_count: int) -> None:
    if cfg.seq_len < 2:
        raise ConfigError(f"data.seq_len must be >= 2, got {cfg.seq_len}.")
    if cfg.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {cfg.batch_size}.")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"data.seed must be in [0, 2**32), got {cfg.seed}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in [0, {process_count}).")
    if cfg.batch_size % process_count:
        raise DataError(f"Global batch size {cfg.batch_size} is not divisible by "
                        f"{process_count} processes; make data.batch_size a multiple of it.")


def make_dataset(cfg, corpus: Corpus, tokenizer: Tokenizer, split: str = "train", *,
                 process_index: int = 0, process_count: int = 1,
                 stats: ReadStats | None = None) -> grain.IterDataset:
    """Batches for ``split`` ('train': shuffled, repeated; 'validation': one ordered pass)."""
    if split not in ROLES:
        raise ConfigError(f"split must be one of {ROLES}, got {split!r}.")
    _check(cfg, process_index, process_count)
    train = split == "train"
    source = corpus.source(cfg.train_split if train else cfg.eval_split)
    if len(source) == 0:
        raise DataError(f"Split {split!r} of corpus {corpus.name!r} is empty.")
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.shuffle(seed=cfg.seed).repeat(cfg.num_epochs or None)
    ds = ds.map(Tokenize(tokenizer, corpus.text_feature, stats or ReadStats()))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                              prefetch_buffer_size=cfg.prefetch))
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": cfg.seq_len})
    make_batch = MakeBatch(cfg.batch_size, tokenizer.pad_id, process_index, process_count)
    ds = ds.batch(cfg.batch_size, drop_remainder=train, batch_fn=make_batch)
    if not train and cfg.eval_batches:
        ds = grain.experimental.LimitIterDataset(ds, cfg.eval_batches)
    if cfg.worker_count:
        if not flags.FLAGS.is_parsed():  # grain workers read absl flags; keep their defaults
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return ds


TRAIN_SAMPLERS = Registry("data.sampling")


@TRAIN_SAMPLERS.register("packed")
def packed_train_iterator(cfg, corpus, tokenizer, *, process_index, process_count):
    """Documents in a shuffled order, tokenized and packed while training (grain). Its use:
    corpora too large to pre-tokenize up front, and reproducing runs made before the cache;
    batches come from one or two long documents at a time (noisy losses)."""
    if isinstance(corpus, mixture.Mixture):
        raise ConfigError("data.mixture needs data.sampling='iid' or 'stratified' (the packed "
                          "pipeline reads one corpus)")
    stats = ReadStats()
    ds = make_dataset(cfg, corpus, tokenizer, "train", process_index=process_index,
                      process_count=process_count, stats=stats)
    return BatchIterator(iter(ds), stats, corpus)


def window_train_iterator(cfg, corpus, tokenizer, *, process_index, process_count, strata):
    """Windows of the train split's token cache (built here once; process 0 builds it, the
    others wait for it on the shared data_dir) in ``window_order`` with ``strata``; a
    mixture draws each row's source by weight from one such stream per source
    (kyx/data/mixture.py)."""
    if isinstance(corpus, mixture.Mixture):
        streams = {}
        for label, src in corpus.configs.items():
            cache = token_cache.load(corpus.corpora[label], src.train_split, tokenizer,
                                     src.data_dir, workers=cfg.cache_workers,
                                     process_index=process_index)
            streams[label] = windows.WindowIterator(
                cache, cfg.seq_len, cfg.batch_size, mixture.source_seed(cfg.seed, label),
                pad_id=tokenizer.pad_id, corpus_stats=corpus.corpora[label].stats,
                strata=strata)
        return mixture.MixtureIterator(streams, corpus.weights, cfg.batch_size, cfg.seed,
                                       process_index=process_index,
                                       process_count=process_count)
    cache = token_cache.load(corpus, cfg.train_split, tokenizer, cfg.data_dir,
                             workers=cfg.cache_workers, process_index=process_index)
    return windows.WindowIterator(cache, cfg.seq_len, cfg.batch_size, cfg.seed,
                                  pad_id=tokenizer.pad_id, num_epochs=cfg.num_epochs,
                                  process_index=process_index, process_count=process_count,
                                  corpus_stats=corpus.stats, strata=strata)


@TRAIN_SAMPLERS.register("iid")
def iid_train_iterator(cfg, corpus, tokenizer, *, process_index, process_count):
    """Windows in a uniform random permutation per epoch."""
    return window_train_iterator(cfg, corpus, tokenizer, process_index=process_index,
                                 process_count=process_count, strata=1)


@TRAIN_SAMPLERS.register("stratified")
def stratified_train_iterator(cfg, corpus, tokenizer, *, process_index, process_count):
    """Windows permuted within ``data.batch_size`` contiguous strata of the corpus, a batch
    taking one window of each (kyx/data/windows.py): the same windows per epoch as 'iid',
    with the between-strata part of the batch-loss noise removed."""
    return window_train_iterator(cfg, corpus, tokenizer, process_index=process_index,
                                 process_count=process_count, strata=cfg.batch_size)


def process_split() -> dict:
    """This process's share of every global batch (``make_iterator`` keyword arguments)."""
    import jax

    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def make_iterator(cfg, corpus: Corpus, tokenizer: Tokenizer, split: str = "train", *,
                  process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """A fresh iterator over ``split`` ('train': rows as ``cfg.sampling`` says; 'validation':
    one packed pass); restore a checkpoint with ``it.set_state(state)``."""
    if split == "train":
        _check(cfg, process_index, process_count)
        return TRAIN_SAMPLERS.get(cfg.get("sampling", "packed"))(
            cfg, corpus, tokenizer, process_index=process_index, process_count=process_count)
    if isinstance(corpus, mixture.Mixture):  # the sources' validation passes, one by one
        return mixture.chain_batches(
            [lambda label=label: make_iterator(
                corpus.configs[label], corpus.corpora[label], tokenizer, split,
                process_index=process_index, process_count=process_count)
             for label in corpus.labels])
    stats = ReadStats()
    ds = make_dataset(cfg, corpus, tokenizer, split, process_index=process_index,
                      process_count=process_count, stats=stats)
    return BatchIterator(iter(ds), stats, corpus)


def corpus_texts(corpus: Corpus, split: str, seed: int = 0):
    """Yields the valid texts of a split in a seeded shuffled order (lazily)."""
    for record in grain.MapDataset.source(corpus.source(split)).shuffle(seed=seed):
        text, _ = record_text(record, corpus.text_feature)
        if text is not None:
            yield text


TOKENIZER_KINDS = Registry("data.tokenizer.kind")


@TOKENIZER_KINDS.register("sentencepiece")
def _train_sentencepiece(texts, tcfg, **cache):
    """SentencePiece BPE (Baichuan 2's options; kyx/data/tokenizer.py)."""
    return train_sentencepiece(texts, vocab_size=tcfg.vocab_size,
                               max_bytes=tcfg.sample_bytes, **cache)


def _bpe_trainer(scaffold: bool):
    def train(texts, tcfg, **cache):
        return bpe.train_bpe(texts, vocab_size=tcfg.vocab_size, scaffold=scaffold,
                             split_digits=tcfg.get("split_digits", True),
                             whitespace=tcfg.get("whitespace", "runs"),
                             max_bytes=tcfg.sample_bytes, **cache)
    return train


TOKENIZER_KINDS.register("bpe")(_bpe_trainer(False))            # byte-level BPE (control)
TOKENIZER_KINDS.register("scaffold_bpe")(_bpe_trainer(True))    # Scaffold-BPE (kyx/data/bpe_train.py)


def make_tokenizer(cfg, corpus: Corpus) -> Tokenizer:
    """Loads ``tokenizer.model_path`` (a SentencePiece .model, a kyx BPE .json, or a
    directory with tokenizer.model / tokenizer.bpe.json / tokenizer.json such as a kyx
    workdir or a Hugging Face model), else trains one of ``tokenizer.kind`` on the train
    split (cached by fingerprint)."""
    tcfg = cfg.tokenizer
    if tcfg.model_path and os.path.isdir(tcfg.model_path):
        from kyx.data.hf_tokenizer import load_tokenizer
        return load_tokenizer(tcfg.model_path)
    if tcfg.model_path and tcfg.model_path.endswith(".json"):
        return bpe.BpeTokenizer.from_file(tcfg.model_path)
    if tcfg.model_path:
        return SentencePieceTokenizer.from_file(tcfg.model_path)
    trainer = TOKENIZER_KINDS.get(tcfg.get("kind", "sentencepiece"))
    cache_dir = os.path.join(cfg.data_dir or default_data_dir(), "tokenizers")
    # A fixed sampling seed: the tokenizer must not change with the data order seed.
    if isinstance(corpus, mixture.Mixture):  # a sample drawn by the mixture's weights
        texts = mixture.sample_texts(
            {k: corpus_texts(c, corpus.configs[k].train_split) for k, c in corpus.corpora.items()},
            corpus.weights)
    else:
        texts = corpus_texts(corpus, cfg.train_split)
    kind = tcfg.get("kind", "sentencepiece")
    key = os.path.join(cache_dir, f"{kind}{tcfg.vocab_size}_{fingerprint(corpus.fingerprint)}")
    with exclusive_build(key, f"the {kind} tokenizer of {corpus.name}"):  # then from its cache
        return trainer(texts, tcfg, cache_dir=cache_dir, corpus_id=corpus.fingerprint)


def prepare(cfg) -> tuple[Corpus, Tokenizer]:
    """Builds or loads the corpus and the tokenizer named by the data config."""
    corpus = mixture.load(cfg) if cfg.get("mixture") else load_corpus(cfg)
    return corpus, make_tokenizer(cfg, corpus)
