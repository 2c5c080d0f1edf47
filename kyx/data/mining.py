"""Mine post-training records from Python source (the embedded corpus), deterministically.

Each documented function gives a prompt (its signature and the first line of its
docstring) and a true response (the first lines of its body after the docstring).
Corrupted responses, the undesired outputs:

* ``repeat``: a repetition loop, the response's first line repeated
  (``max(n_lines, 3)`` times);
* ``elsewhere``: the first lines of another function's body (lines from elsewhere).

Views per record kind (choices keyed by a hash of the function's path, name and line):

* sft: the true response, negatives = [repeat, elsewhere];
* preference: chosen = true, rejected = repeat (strength 3, significantly better) or
  elsewhere (strength 2, better), alternating by hash;
* feedback: desirable = the true response or undesirable = a corruption, by hash;
* retrieval (``retrieval_pair``): query = the docstring summary, document = the code
  without its docstring (signature + the first body lines), kyx/data/retrieval.py.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import textwrap

MINING_VERSION = 1


@dataclasses.dataclass
class Function:
    key: int          # stable hash of (path, qualified name, line)
    prompt: str
    lines: list[str]  # response lines (dedented relative to the def)
    summary: str = ""     # first line of the docstring
    signature: str = ""   # the def line(s), dedented


    @property
    def response(self) -> str:
        return "\n".join(self.lines)


def stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def mine_source(text: str, path: str, max_prompt_chars: int = 200,
                max_response_lines: int = 4, max_response_chars: int = 200) -> list[Function]:
    """Documented functions of one file (no functions if it does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        fn = _function(node, lines, path, max_prompt_chars, max_response_lines,
                       max_response_chars)
        if fn is not None:
            out.append(fn)
    return out


def _function(node, lines, path, max_prompt_chars, max_lines, max_chars):
    doc = ast.get_docstring(node, clean=True)
    if not doc or not doc.strip() or len(node.body) < 2:
        return None
    summary = doc.strip().splitlines()[0].strip()
    first = node.body[0]
    indent = " " * (first.col_offset - node.col_offset)
    signature = lines[node.lineno - 1:first.lineno - 1]
    if not summary or not signature or len(signature) > 3 or '"""' in summary:
        return None
    signature = textwrap.dedent("\n".join(signature)).rstrip()
    prompt = f'{signature}\n{indent}"""{summary}"""'
    body = [ln[node.col_offset:] if ln[:node.col_offset].strip() == "" else ln
            for ln in lines[first.end_lineno:node.end_lineno]]
    body = [ln.rstrip() for ln in body if ln.strip()]
    kept, size = [], 0
    for ln in body[:max_lines]:
        if size + len(ln) + 1 > max_chars:
            break
        kept.append(ln)
        size += len(ln) + 1
    if len(kept) < 2 or len(prompt) > max_prompt_chars or "\t" in prompt:
        return None
    return Function(stable_hash(path, node.name, str(node.lineno)), prompt, kept, summary,
                    signature)


def retrieval_pair(fn: Function) -> tuple[str, str]:
    """(query, document): the docstring summary and the function's code without it."""
    return fn.summary, f"{fn.signature}\n{fn.response}"


def repeat(fn: Function) -> str:
    return "\n".join([fn.lines[0]] * max(len(fn.lines), 3))


def elsewhere(fns: list[Function], i: int) -> str:
    """Lines of the first other function (scanning from a hashed offset) whose body differs."""
    fn, n = fns[i], len(fns)
    start = 1 + fn.key % max(n - 1, 1)
    for off in range(n - 1):
        other = fns[(i + start + off) % n]
        text = "\n".join(other.lines[:len(fn.lines)])
        if other is not fn and text != fn.response and other.lines[0] != fn.lines[0]:
            return text
    return repeat(fn)  # a single distinct function: fall back to the repetition loop


def view(kind: str, fns: list[Function], i: int) -> dict:
    """The record of ``kind`` for function ``i`` (normalised like records.normalize)."""
    fn = fns[i]
    bad_is_repeat = (fn.key >> 8) % 2 == 0
    corrupted = repeat(fn) if bad_is_repeat else elsewhere(fns, i)
    base = {"prompt": fn.prompt, "system": ""}
    if kind == "sft":
        return {**base, "response": fn.response, "negatives": [repeat(fn), elsewhere(fns, i)]}
    if kind == "preference":
        return {**base, "chosen": fn.response, "rejected": corrupted,
                "strength": 3 if bad_is_repeat else 2}
    desirable = fn.key % 2 == 0
    return {**base, "response": fn.response if desirable else corrupted,
            "label": int(desirable)}
