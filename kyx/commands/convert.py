"""`kyx convert`: Hugging Face directory <-> kyx workdir.

    kyx convert --from-hf HF_DIR --workdir OUT
    kyx convert --to-hf --workdir DIR --out HF_DIR [--layout llama|mistral|qwen2|baichuan]

A converted workdir holds `config.json` (a full pretraining config whose `model` section
comes from the HF config, plus `interop.layout`), the tokenizer files and a params-only
Orbax checkpoint at step 0, so `kyx sample`, `kyx.load` and `init_from` accept it.

An exported HF directory holds config.json, safetensors and the tokenizer files that
transformers and other tools read (kyx/interop/hf_tokenizer_export.py): tokenizer.json,
tokenizer_config.json with `add_bos_token` and kyx's chat template, special_tokens_map.json
and generation_config.json; `AutoTokenizer` + `AutoModelForCausalLM` on it reproduce
`kyx sample --temperature 0` token for token.
"""
from __future__ import annotations

import argparse
import json
import os

import ml_collections

from kyx import config as config_lib
from kyx.checkpoint.manager import Checkpointer
from kyx.checkpoint.workdir_lock import WorkdirLock
from kyx.data.hf_tokenizer import ADD_TOKENIZER
from kyx.errors import ConfigError
from kyx.fileio import atomic_write
from kyx.interop import hf, hf_dir, hf_layouts
from kyx.interop.hf_tokenizer_export import export_tokenizer
from kyx.model.config import ModelConfig


def from_hf(hf_path: str, workdir: str, mesh=None, rules="fsdp") -> str:
    from kyx.train.pretrain import config_for_model

    model = hf_dir.load_hf_model(hf_path, mesh, rules)
    if model.tokenizer is None:
        raise ConfigError(f"{hf_path!r} has weights but no tokenizer; a kyx workdir needs "
                          "one to train or sample: "
                          + ADD_TOKENIZER.format(dir=hf_path))
    cfg = config_for_model(model.config)
    cfg.data.tokenizer.vocab_size = model.tokenizer.vocab_size
    cfg.interop = ml_collections.ConfigDict({"layout": model.layout,
                                             "source": os.path.abspath(hf_path)})
    with WorkdirLock(workdir, "convert"):
        config_lib.dump(cfg, os.path.join(workdir, "config.json"))
        hf.copy_tokenizer_files(hf_path, workdir)
        tok = model.tokenizer
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
               "pad_token_id": tok.pad_id}
        atomic_write(os.path.join(workdir, "generation_config.json"),
                     json.dumps({k: v for k, v in ids.items() if v is not None}))
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
        ckpt.save_params(0, model.params, cfg.to_dict())
        ckpt.close()
    return workdir


def default_layout(cfg: ModelConfig) -> str:
    return "baichuan" if cfg.norm_head or cfg.position == "alibi" else (
        "qwen2" if cfg.qkv_bias else "llama")


def to_hf(workdir: str, out_dir: str, layout: str | None = None) -> str:
    from kyx.api import load

    loaded = load(workdir)
    cfg = loaded.model.cfg
    layout = layout or loaded.config.get("interop", {}).get("layout") or default_layout(cfg)
    if layout not in hf_layouts.LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {hf_layouts.LAYOUTS}")
    tok = loaded.tokenizer
    hf.save_params(loaded.params, cfg, layout, out_dir, bos_id=tok.bos_id, eos_id=tok.eos_id)
    export_tokenizer(workdir, out_dir, tok, loaded.config, cfg.max_seq_len)
    return out_dir


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx convert")
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="HF_DIR", help="import a Hugging Face model")
    direction.add_argument("--to-hf", action="store_true", help="export --workdir to --out")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", help="output HF directory (with --to-hf)")
    parser.add_argument("--layout", choices=list(hf_layouts.LAYOUTS))
    args = parser.parse_args(argv)
    if args.from_hf:
        print(f"wrote {from_hf(args.from_hf, args.workdir)}")
    else:
        if not args.out:
            parser.error("--to-hf needs --out HF_DIR")
        print(f"wrote {to_hf(args.workdir, args.out, args.layout)}")
    return 0
