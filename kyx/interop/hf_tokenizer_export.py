"""The tokenizer files of an exported Hugging Face directory, so that transformers (and
tools that read tokenizer.json, such as TGI or vLLM) tokenize, chat and stop as kyx does.

A workdir whose tokenizer came from Hugging Face (it holds tokenizer_config.json) keeps
its files as they came (a generation_config.json is written when it has none). For a
kyx-trained SentencePiece tokenizer kyx writes:

* ``tokenizer.model``: copied (checked against its digest);
* ``tokenizer.json``: transformers' conversion of the SentencePiece model (it follows the
  model's own settings: no normalisation, no dummy prefix, byte fallback, kyx's control
  pieces as special tokens) with a post-processor that puts BOS first;
* ``tokenizer_config.json``: ``tokenizer_class`` ``PreTrainedTokenizerFast`` (transformers
  4 and 5 then use tokenizer.json as it is; ``LlamaTokenizer`` would rebuild Llama's
  dummy-prefix pre-tokenizer and change the ids), ``add_bos_token`` true and
  ``add_eos_token`` false (kyx puts BOS before every document and prompt and no EOS after
  a prompt), the special tokens, ``model_max_length`` and ``chat_template``: kyx's chat
  format as Jinja (kyx/data/chat.py ``jinja_source``);
* ``special_tokens_map.json``: bos / eos / unk / pad and the chat markers;
* ``generation_config.json``: BOS, EOS and pad ids; a policy trained in chat format (any
  trainer but ``pretrain``) also stops where its chat template ends a turn (``<|eot|>``),
  as ``kyx sample --chat`` does.

A kyx byte-level BPE tokenizer (``tokenizer.bpe.json``, copied) gets the same files, its
``tokenizer.json`` written by kyx/interop/hf_bpe_export.py: exact for ``bpe``; for
``scaffold_bpe`` (which no BPE model reproduces exactly, see there) BPE over the expanded
vocabulary plus ``scaffold_demolition.json``, the table mapping the scaffold tokens' ids
(from ``vocab_size`` on) to kyx's ids.

The result is checked before the export reports success: the directory is loaded back
with ``transformers.AutoTokenizer`` and must encode and decode ``PROBES`` exactly as kyx
does (see ``check_tokenizer`` for the model types where transformers 5 substitutes its
own tokenizer class). transformers (``pip install -e .[hf]``) is needed for the
conversion and the check.
"""
from __future__ import annotations

import json
import os
import tempfile

from kyx.data import hf_tokenizer
from kyx.data.chat import jinja_source, reserves_chat_tokens
from kyx.data.templates import template_of
from kyx.data.tokenizer import CHAT_TOKENS, PLACEHOLDER
from kyx.distributed import is_writer
from kyx.errors import ConfigError
from kyx.fileio import atomic_write
from kyx.interop import hf_bpe_export
from kyx.interop.hf import copy_tokenizer_files
from kyx.logs import get_logger

log = get_logger(__name__)

GENERATION_FILE = hf_tokenizer.GENERATION_FILE
# Texts the exported tokenizer must encode exactly like kyx's: indentation, tabs, blank
# lines, runs of spaces, digits, accents, CJK and emoji (byte fallback), edge spaces.
PROBES = ("def add(a, b):\n    return a + b\n", "\tx = [1, 22, 333]\n\n\n# done  ",
          " leading and trailing ", "naïve café — 中文 🎉", "a  b   c\r\nd", "3.14159e-10")


def export_tokenizer(workdir: str, out_dir: str, tokenizer, run_config, max_len: int
                     ) -> list[str]:
    """Write ``out_dir``'s tokenizer files for the workdir's tokenizer (see the module
    docstring); returns the file names written (none but on process 0)."""
    if not is_writer():
        return []
    written = copy_tokenizer_files(workdir, out_dir)
    files = {}
    if GENERATION_FILE not in written:
        files[GENERATION_FILE] = generation_config(tokenizer, run_config)
    bpe = getattr(tokenizer, "model_json", None) is not None
    if hf_tokenizer.CONFIG_FILE not in written and (
            bpe or getattr(tokenizer, "model_proto", None)):
        stale = os.path.join(out_dir, hf_tokenizer.JINJA_FILE)
        if os.path.exists(stale):   # transformers 5 would prefer it to our chat_template
            os.remove(stale)
        files[hf_tokenizer.CONFIG_FILE] = tokenizer_config(tokenizer, max_len)
        files[hf_tokenizer.MAP_FILE] = special_tokens_map(tokenizer)
    table, old_table = None, os.path.join(out_dir, hf_bpe_export.SCAFFOLD_FILE)
    if os.path.exists(old_table):   # an earlier export's
        os.remove(old_table)
    if bpe and hf_tokenizer.CONFIG_FILE in files and tokenizer.model.scaffold:
        table = hf_bpe_export.scaffold_table(tokenizer)
        files[hf_bpe_export.SCAFFOLD_FILE] = {
            "vocab_size": tokenizer.vocab_size,
            "demolition": {str(i): ids for i, ids in sorted(table.items())}}
    for name, data in files.items():
        atomic_write(os.path.join(out_dir, name), json.dumps(data, indent=2, ensure_ascii=False))
    if hf_tokenizer.CONFIG_FILE in files:
        text = hf_bpe_export.tokenizer_json(tokenizer) if bpe else tokenizer_json(out_dir)
        atomic_write(os.path.join(out_dir, hf_tokenizer.JSON_FILE), text)
        check_tokenizer(out_dir, tokenizer, table)
        files[hf_tokenizer.JSON_FILE] = None
        if table:
            log.warning("Scaffold-BPE exported as BPE over its expanded vocabulary: %s gives "
                        "ids %d..%d to the %d scaffold tokens (no BPE model encodes exactly "
                        "as demolition does); map them to model ids with %s "
                        "(kyx.interop.hf_bpe_export.demolish) before feeding the model",
                        hf_tokenizer.JSON_FILE, tokenizer.vocab_size,
                        tokenizer.vocab_size + len(table) - 1, len(table),
                        hf_bpe_export.SCAFFOLD_FILE)
    return written + list(files)


def _token_texts(tokenizer) -> dict[str, str]:
    ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id,
           "unk_token": getattr(tokenizer, "unk_id", None), "pad_token": tokenizer.pad_id}
    return {k: tokenizer.id_to_piece(i) for k, i in ids.items() if i is not None and i >= 0}


def tokenizer_config(tokenizer, max_len: int) -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True,
            "add_eos_token": False, **_token_texts(tokenizer), "model_max_length": max_len,
            "clean_up_tokenization_spaces": False, "chat_template": jinja_source(tokenizer)}


def special_tokens_map(tokenizer) -> dict:
    extra = list(CHAT_TOKENS) if reserves_chat_tokens(tokenizer) else []
    special = getattr(tokenizer, "special_id", lambda piece: None)
    extra += [PLACEHOLDER] if special(PLACEHOLDER) is not None else []
    return {**_token_texts(tokenizer), "additional_special_tokens": extra}


def generation_config(tokenizer, run_config) -> dict:
    """BOS / EOS / pad ids; a run trained in chat format (any trainer but ``pretrain``)
    also stops where its chat template ends a turn."""
    eos = [tokenizer.eos_id]
    if (run_config or {}).get("trainer", "pretrain") != "pretrain":
        stop = template_of(tokenizer, run_config).stop_id
        eos += [stop] if stop not in eos else []
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": tokenizer.pad_id}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("exporting a kyx-trained tokenizer writes tokenizer.json with "
                          "transformers' SentencePiece converter and checks it with "
                          "transformers: pip install -e '.[hf]' "
                          "(transformers>=5.23)") from None
    return transformers


def tokenizer_json(out_dir: str) -> str:
    """tokenizer.json text converted by transformers from out_dir's tokenizer.model and
    tokenizer_config.json (in a scratch copy, so an older tokenizer.json is not read)."""
    fast = _transformers().PreTrainedTokenizerFast
    with tempfile.TemporaryDirectory() as scratch:
        for name in (hf_tokenizer.SP_FILE, hf_tokenizer.CONFIG_FILE, hf_tokenizer.MAP_FILE):
            with open(os.path.join(out_dir, name), "rb") as src, \
                    open(os.path.join(scratch, name), "wb") as dst:
                dst.write(src.read())
        return fast.from_pretrained(scratch).backend_tokenizer.to_str()


def _mismatch(hf_tok, tokenizer, table=None) -> str | None:
    for text in PROBES:
        want = [tokenizer.bos_id] + list(tokenizer.encode(text))
        got = hf_tok(text)["input_ids"]
        back = hf_tok.decode(got[1:])
        if hf_bpe_export.demolish(got, table or {}) != want or back != text:
            return (f"on {text!r} transformers gives {got} (decoded {back!r}), kyx {want}")
    return None


def check_tokenizer(out_dir: str, tokenizer, table: dict | None = None) -> None:
    """transformers' tokenizer of ``out_dir`` encodes and decodes PROBES as kyx does
    (a Scaffold-BPE export's ids after demolition by ``table``).

    transformers 5's AutoTokenizer ignores ``tokenizer_class`` for a few model types
    (``qwen2``: it builds its own byte-level Qwen2Tokenizer from the vocabulary); then the
    declared PreTrainedTokenizerFast must match, and a warning says to load it by name."""
    tf = _transformers()
    auto = tf.AutoTokenizer.from_pretrained(out_dir)
    if _mismatch(auto, tokenizer, table) is None:
        return
    problem = _mismatch(tf.PreTrainedTokenizerFast.from_pretrained(out_dir), tokenizer, table)
    if problem:
        raise ConfigError(f"the exported tokenizer in {out_dir} does not match kyx's: "
                          f"{problem}; is transformers older than 5.23?")
    log.warning("transformers' AutoTokenizer loads %s for this model type instead of the "
                "tokenizer kyx wrote, and it tokenizes differently; load it with "
                "transformers.PreTrainedTokenizerFast.from_pretrained(%r)",
                type(auto).__name__, out_dir)
