"""A kyx byte-level BPE tokenizer (``data.tokenizer.kind = "bpe" | "scaffold_bpe"``,
kyx/data/bpe.py) as a Hugging Face ``tokenizer.json``.

The file is a ``tokenizers`` BPE model built directly (no conversion library):

* pre-tokeniser: ``Split`` with kyx's own regex (kyx/data/pretokenize.py: GPT-4's pattern
  with the digit / whitespace options of the tokenizer file), then ``ByteLevel`` without
  its own regex or prefix space; decoder ``ByteLevel``;
* vocabulary: GPT-2's byte-to-character mapping of each token's bytes, at kyx's ids (0..8
  special and control pieces, also declared as special added tokens; bytes at 9..264;
  learned tokens after them);
* merges: kyx's merges in rank order, a pair recorded twice kept at its first rank (as
  kyx's encoder uses it: ``tokenizers`` would keep the last);
* post-processor: BOS first (kyx puts BOS before every document and prompt).

Plain ``bpe`` is exact: the same rank-ordered merges over the same words give the same ids.

``scaffold_bpe`` cannot be exact as any BPE model, whatever its vocabulary and merges.
Lemma: if a rank-ordered BPE encodes a word w as the single token [w], its last merge
(x, y) joined two tokens built only from their own bytes (a merge across their boundary
can never be undone), and the same merges applied in the same order build x alone from
the word x, so the BPE encodes the word x as [x] (and the word y as [y]). So a
tokenizer that encodes w as [w] has a split w = x + y whose halves it also encodes as
single tokens. kyx's Scaffold-BPE encoder breaks this: in the hand-worked model of
tests/data/test_bpe.py it encodes "abcd" as [abcd], but "abc" as [ab, c] (abc is a
scaffold token, demolished), "bcd" as [b, c, d] and "cd" as [c, d]; on stdlib code at
vocab 2000, 220 tokens of V such as " return", " else" and " isinstance" have no such split
(tests/interop/test_hf_bpe_export.py finds them). Demolition looks at the finished word;
BPE cannot take back a merge.

The closest exact form, exported for ``scaffold_bpe``: the BPE model over the expanded
vocabulary E, tokens of V at kyx's ids and the scaffold tokens after them (ids
``vocab_size`` .. |E| - 1). It tokenizes exactly as kyx's encoder before demolition, so
``demolish(hf_ids, table)`` with ``scaffold_table(tok)`` (written to the export as
``SCAFFOLD_FILE``) gives kyx's ids exactly, and decoding needs no table. Ids of scaffold
tokens are outside the model's embedding: feed an exported model only demolished ids.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from kyx.data.bpe import SPECIALS
from kyx.data.token_bytes import BYTE_CHARS
from kyx.data.tokenizer import BOS_ID

SCAFFOLD_FILE = "scaffold_demolition.json"


def _text(piece: bytes) -> str:
    return "".join(BYTE_CHARS[b] for b in piece)


def hf_ids(tok) -> dict[int, int]:
    """E id -> id in the exported tokenizer: kyx's model id for tokens of V, then the
    scaffold tokens in E order from ``tok.vocab_size`` on."""
    ids = dict(tok._dense)
    for e in range(len(tok._pieces)):
        if e not in ids:
            ids[e] = tok.vocab_size + len(ids) - len(tok._dense)
    return ids


def scaffold_table(tok) -> dict[int, list[int]]:
    """Exported id of each scaffold token -> the kyx ids it is demolished into."""
    ids = hf_ids(tok)
    return {ids[e]: list(tok._demolish[e]) for e in range(len(tok._pieces))
            if e not in tok._dense}


def demolish(ids: Iterable[int], table: dict[int, list[int]]) -> list[int]:
    """kyx's ids from the exported tokenizer's ids (scaffold tokens replaced)."""
    return [j for i in ids for j in table.get(i, (i,))]


def tokenizer_json(tok) -> str:
    """The ``tokenizer.json`` text of a kyx BpeTokenizer (see the module docstring)."""
    ids = hf_ids(tok)
    vocab = {p: i for i, p in enumerate(SPECIALS)}
    vocab.update({_text(tok._pieces[e]): i for e, i in ids.items()})
    merges, seen = [], set()
    for a, b in tok.model.merges:
        if (a, b) not in seen:
            seen.add((a, b))
            merges.append([_text(tok._pieces[a]), _text(tok._pieces[b])])
    added = [{"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, p in enumerate(SPECIALS)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    bos = SPECIALS[BOS_ID]
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pretokenizer.pattern},
             "behavior": "Isolated", "invert": False}, byte_level]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [BOS_ID], "tokens": [bos]}}},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges}}
    return json.dumps(spec, ensure_ascii=False)


def check_export(tok, texts) -> dict:
    """Encodes ``texts`` with ``tok``'s export (for scaffold_bpe: the BPE over E, then
    ``demolish``) in the ``tokenizers`` library and counts the texts whose ids equal kyx's
    own encoding: ``{"texts", "identical", "tokens"}``."""
    import tokenizers

    hf = tokenizers.Tokenizer.from_str(tokenizer_json(tok))
    table = scaffold_table(tok) if tok.model.scaffold else {}
    ours = tok.encode_batch(list(texts))
    theirs = [demolish(e.ids, table) for e in hf.encode_batch(list(texts), add_special_tokens=False)]
    same = sum(list(a) == list(b) for a, b in zip(theirs, ours))
    return {"texts": len(ours), "identical": same, "tokens": sum(len(a) for a in ours)}

