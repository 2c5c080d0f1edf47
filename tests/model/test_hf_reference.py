"""Logits equal Hugging Face transformers' LlamaForCausalLM on tiny random weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from kyx.interop.hf import DictReader, load_params
from kyx.model import Decoder, ModelConfig


def _hf_model(num_kv_heads, tie=False, seed=0):
    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=num_kv_heads, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=tie,
        attention_bias=False, mlp_bias=False)
    model = transformers.LlamaForCausalLM(hf_cfg).eval().float()
    # random norms so a wrong norm mapping cannot pass
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    cfg = ModelConfig(vocab_size=96, d_model=64, num_layers=3, num_heads=4,
                      num_kv_heads=num_kv_heads, ffn_dim=176, rope_theta=10000.0,
                      norm_eps=1e-6, tie_embeddings=tie)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return model, cfg, load_params(DictReader(sd), cfg, "llama")


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_logits_match_transformers(num_kv_heads):
    hf, cfg, params = _hf_model(num_kv_heads)
    tokens = np.random.default_rng(0).integers(0, 96, size=(2, 24)).astype(np.int64)
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    logits, _ = Decoder(cfg).apply({"params": jax.tree.map(jnp.asarray, params)},
                                   jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)


def test_tied_embeddings_match_transformers():
    hf, cfg, params = _hf_model(2, tie=True, seed=1)
    tokens = np.random.default_rng(1).integers(0, 96, size=(1, 16)).astype(np.int64)
    with torch.no_grad():
        ref = hf(torch.from_numpy(tokens)).logits.numpy()
    logits, _ = Decoder(cfg).apply({"params": jax.tree.map(jnp.asarray, params)},
                                   jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)


def test_packed_documents_match_separate_transformers_runs():
    """Two documents packed in one row give the logits of two independent HF runs."""
    hf, cfg, params = _hf_model(2, seed=2)
    rng = np.random.default_rng(2)
    doc_a, doc_b = rng.integers(0, 96, size=10), rng.integers(0, 96, size=14)
    tokens = np.concatenate([doc_a, doc_b])[None]
    segments = np.array([[1] * 10 + [2] * 14])
    positions = np.array([list(range(10)) + list(range(14))])
    logits, _ = Decoder(cfg).apply({"params": jax.tree.map(jnp.asarray, params)},
                                   jnp.asarray(tokens, jnp.int32), jnp.asarray(segments),
                                   jnp.asarray(positions))
    with torch.no_grad():
        ref_a = hf(torch.from_numpy(doc_a[None])).logits.numpy()[0]
        ref_b = hf(torch.from_numpy(doc_b[None])).logits.numpy()[0]
    np.testing.assert_allclose(np.asarray(logits)[0, :10], ref_a, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(logits)[0, 10:], ref_b, atol=1e-4, rtol=1e-4)
