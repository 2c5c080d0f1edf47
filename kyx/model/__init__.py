"""Decoder-only Transformer language models."""
from kyx.model.config import ModelConfig, default_config, swiglu_hidden_dim
from kyx.model.transformer import Decoder, init_cache
