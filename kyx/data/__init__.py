"""Data layer: corpora (tfds builders writing array_record), tokenizers, grain pipeline."""
from kyx.data.corpus import Corpus, default_data_dir, load_corpus, split_paths
from kyx.data.pipeline import (
    BatchIterator,
    ReadStats,
    default_config,
    make_dataset,
    make_iterator,
    make_tokenizer,
    next_token_targets,
    prepare,
)
from kyx.data.tokenizer import SentencePieceTokenizer, Tokenizer, train_sentencepiece

__all__ = [
    "BatchIterator", "Corpus", "ReadStats", "SentencePieceTokenizer", "Tokenizer",
    "default_config", "default_data_dir", "load_corpus", "make_dataset", "make_iterator",
    "make_tokenizer", "next_token_targets", "prepare", "split_paths", "train_sentencepiece",
]
