"""HF import is strict: every tensor in the files is consumed (or allow-listed), missing
tensors, missing / truncated shards and a broken config.json are clear kyx errors, through
`kyx.load`, `kyx convert --from-hf` and `init_from`."""
import json
import os
import re

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import kyx
from kyx import config as config_lib
from kyx.cli import main as cli_main
from kyx.errors import CheckpointError
from kyx.interop import hf, hf_layouts
from kyx.interop.hf import DictReader
from kyx.model import Decoder, ModelConfig
from kyx.train import init_from

VOCAB = 64
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def _tokenizer_json(path):
    import tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


def _make_hf(tmp_path, name="hf", shard=None, tie=False):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval().float()
    out = tmp_path / name
    model.save_pretrained(out, max_shard_size=shard or "5GB")
    _tokenizer_json(out)
    return out


def _edit_config(path, **changes):
    cfg = json.load(open(path / "config.json"))
    cfg.update(changes)
    json.dump(cfg, open(path / "config.json", "w"))


def _edit_tensors(path, fn):
    sd = load_file(str(path / hf.SINGLE))
    save_file(fn(dict(sd)), str(path / hf.SINGLE), metadata={"format": "pt"})


def _init_from_load(source):
    """Both halves of `init_from`: adopt the source's architecture, then load its params."""
    cfg = config_lib.load(f"{CONFIGS}/pretrain.py:tiny", [f"init_from={source}"])
    init_from.adopt_source(cfg)
    return init_from.load_params(cfg, Decoder(ModelConfig.from_config(cfg.model)))


def _convert(source, tmp_path, capsys):
    capsys.readouterr()
    code = cli_main(["convert", "--from-hf", str(source), "--workdir", str(tmp_path / "work")])
    return code, capsys.readouterr().err


def _all_entry_points(source, tmp_path, capsys, match):
    with pytest.raises(CheckpointError, match=match):
        kyx.load(str(source))
    with pytest.raises(CheckpointError, match=match):
        _init_from_load(str(source))
    code, err = _convert(source, tmp_path, capsys)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(match, err), err
    assert not (tmp_path / "work").exists()   # nothing half-written


# ------------------------------------------------------------- every tensor consumed

def test_config_with_fewer_layers_than_the_files_is_an_error(tmp_path, capsys):
    path = _make_hf(tmp_path)
    _edit_config(path, num_hidden_layers=1)
    _all_entry_points(path, tmp_path, capsys,
                      r"(?s)9 unexpected tensors.*model\.layers\.1\..*num_hidden_layers=1")


def test_extra_layer_tensors_are_an_error(tmp_path):
    path = _make_hf(tmp_path)
    _edit_tensors(path, lambda sd: {**sd, **{
        k.replace("layers.0.", "layers.9."): v for k, v in sd.items() if "layers.0." in k}})
    with pytest.raises(CheckpointError, match=r"(?s)9 unexpected tensors.*model\.layers\.9\."):
        kyx.load(str(path))


def test_rotary_cache_is_allowed(tmp_path):
    path = _make_hf(tmp_path)
    inv = np.ones(4, np.float32)
    _edit_tensors(path, lambda sd: {**sd, "model.layers.0.self_attn.rotary_emb.inv_freq": inv,
                                    "model.rotary_emb.inv_freq": inv})
    kyx.load(str(path))  # no error


def test_missing_tensors_are_all_named(tmp_path):
    path = _make_hf(tmp_path)
    gone = ("model.layers.1.mlp.up_proj.weight", "model.norm.weight")
    _edit_tensors(path, lambda sd: {k: v for k, v in sd.items() if k not in gone})
    with pytest.raises(CheckpointError, match=r"(?s)2 tensors.*missing.*model\.layers\.1\.mlp\."
                                              r"up_proj\.weight.*model\.norm\.weight"):
        kyx.load(str(path))


def test_tied_head_copy_must_equal_the_embedding():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, tie_word_embeddings=True))
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    cfg, layout = hf_layouts.model_config_from_hf(model.config.to_dict())
    assert "lm_head.weight" in sd
    hf.load_params(DictReader(sd), cfg, layout)  # the tied copy is fine
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    with pytest.raises(CheckpointError, match=r"lm_head\.weight.*tie_word_embeddings"):
        hf.load_params(DictReader(sd), cfg, layout)


def test_shard_tensors_absent_from_the_index_are_unexpected(tmp_path):
    path = _make_hf(tmp_path, shard="20KB")
    files = sorted(set(json.load(open(path / hf.INDEX))["weight_map"].values()))
    sd = load_file(str(path / files[0]))
    sd["model.layers.7.mlp.up_proj.weight"] = np.zeros((2, 2), np.float32)
    save_file(sd, str(path / files[0]), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.7\.mlp\.up_proj\.weight"):
        kyx.load(str(path))


def test_index_naming_a_tensor_its_shard_lacks_is_an_error(tmp_path):
    path = _make_hf(tmp_path, shard="20KB")
    index = json.load(open(path / hf.INDEX))
    name, fname = next(iter(index["weight_map"].items()))
    other = next(f for f in index["weight_map"].values() if f != fname)
    index["weight_map"][name] = other
    json.dump(index, open(path / hf.INDEX, "w"))
    with pytest.raises(CheckpointError, match=rf"{name}.*{other}"):
        kyx.load(str(path))


# ------------------------------------------------------------- damaged directories

def test_missing_shard_is_a_clear_error(tmp_path, capsys):
    path = _make_hf(tmp_path, shard="20KB")
    files = sorted(set(json.load(open(path / hf.INDEX))["weight_map"].values()))
    assert len(files) > 2
    os.remove(path / files[1])
    _all_entry_points(path, tmp_path, capsys, rf"{files[1]}.*missing.*download")


def test_truncated_safetensors_is_a_clear_error(tmp_path, capsys):
    path = _make_hf(tmp_path)
    data = (path / hf.SINGLE).read_bytes()
    (path / hf.SINGLE).write_bytes(data[: len(data) // 2])
    _all_entry_points(path, tmp_path, capsys, r"model\.safetensors.*(truncated|corrupt)")


def test_truncated_shard_is_a_clear_error(tmp_path):
    path = _make_hf(tmp_path, shard="20KB")
    files = sorted(set(json.load(open(path / hf.INDEX))["weight_map"].values()))
    (path / files[-1]).write_bytes((path / files[-1]).read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{files[-1]}.*(truncated|corrupt)"):
        kyx.load(str(path))


def test_unparseable_index_is_a_clear_error(tmp_path):
    path = _make_hf(tmp_path, shard="20KB")
    (path / hf.INDEX).write_text('{"weight_map": {"a": ')
    with pytest.raises(CheckpointError, match=hf.INDEX):
        kyx.load(str(path))


def test_missing_config_json_is_a_clear_error(tmp_path, capsys):
    path = _make_hf(tmp_path)
    os.remove(path / "config.json")
    _all_entry_points(path, tmp_path, capsys, r"holds safetensors weights but has no config\.json")


def test_truncated_config_json_is_a_clear_error(tmp_path, capsys):
    path = _make_hf(tmp_path)
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text[: len(text) // 2])
    _all_entry_points(path, tmp_path, capsys, r"config\.json.*not valid JSON")


def test_config_json_missing_a_key_is_a_clear_error(tmp_path, capsys):
    path = _make_hf(tmp_path)
    cfg = json.load(open(path / "config.json"))
    del cfg["hidden_size"]
    json.dump(cfg, open(path / "config.json", "w"))
    _all_entry_points(path, tmp_path, capsys, r"config\.json.*hidden_size")


# ------------------------------------------------------------- export satisfies import

@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_export_reimports_strictly(tmp_path, tie):
    path = _make_hf(tmp_path, tie=tie)
    work, out = tmp_path / "work", tmp_path / "out"
    assert cli_main(["convert", "--from-hf", str(path), "--workdir", str(work)]) == 0
    assert cli_main(["convert", "--to-hf", "--workdir", str(work), "--out", str(out)]) == 0
    first, again = kyx.load(str(work)), kyx.load(str(out))
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_checkpoint_imports(tmp_path):
    """Most published checkpoints are bf16 (numpy reads it through ml_dtypes, via jax)."""
    path = _make_hf(tmp_path)
    sd = load_file(str(path / hf.SINGLE))
    import safetensors.torch
    safetensors.torch.save_file({k: torch.from_numpy(v).bfloat16() for k, v in sd.items()},
                                str(path / hf.SINGLE), metadata={"format": "pt"})
    loaded = kyx.load(str(path))
    want = torch.from_numpy(sd["model.embed_tokens.weight"]).bfloat16().float().numpy()
    np.testing.assert_array_equal(np.asarray(loaded.params["embed"]["embedding"]), want)


def _random_params(cfg, seed):
    import flax.linen as nn
    import jax.numpy as jnp

    abstract = jax.eval_shape(Decoder(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        nn.unbox(abstract["params"]))


def test_export_replaces_a_previous_export_in_the_same_directory(tmp_path):
    """Re-exporting into a directory must not leave the old index / shards to be read."""
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, ffn_dim=48)
    old, new = _random_params(cfg, 0), _random_params(cfg, 1)
    embed = "model.embed_tokens.weight"
    hf.save_params(old, cfg, "llama", str(tmp_path), max_shard_bytes=20_000)
    assert (tmp_path / hf.INDEX).exists()
    hf.save_params(new, cfg, "llama", str(tmp_path))        # one file this time
    np.testing.assert_array_equal(hf.SafetensorsReader(str(tmp_path)).get(embed),
                                  new["embed"]["embedding"])
    hf.save_params(old, cfg, "llama", str(tmp_path), max_shard_bytes=20_000)
    assert not (tmp_path / hf.SINGLE).exists()
    np.testing.assert_array_equal(hf.SafetensorsReader(str(tmp_path)).get(embed),
                                  old["embed"]["embedding"])
    hf.load_params(str(tmp_path), cfg, "llama")             # and nothing stale is left over
