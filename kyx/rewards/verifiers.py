"""Programmatic verifiers for the embedded code data: (prompt, response) -> score.

Prompts of the mined records are a function's signature and docstring summary; a response
is the start of its body (kyx/data/mining.py). Each verifier is a pure function of the two
strings, so it runs on the host, per process, on that process's rows.

* ``parses``: 1 if ``prompt + response`` is valid Python, also when the response stops
  inside an open block (a trailing ``pass`` closes it: responses are body prefixes); a
  response without code (empty, or only comments) scores 0, since the docstring alone
  would parse;
* ``uses_args``: the share of the function's parameters (``self`` / ``cls`` aside) that
  the response reads (1 when there are none); 0 if it does not parse;
* ``no_repeats``: 1 − the share of response lines that repeat an earlier line (the
  repetition loops SFT negative feedback targets);
* ``length``: −(characters beyond ``max_chars``) / ``max_chars`` (0 within budget).
"""
from __future__ import annotations

import ast


def _tree(prompt: str, response: str):
    """The parsed function (closing a dangling block with ``pass``), or None."""
    text = prompt.rstrip("\n") + "\n" + response.rstrip() + "\n"
    last = [ln for ln in response.splitlines() if ln.strip()]
    indent = (len(last[-1]) - len(last[-1].lstrip())) if last else 4
    for candidate in (text, text + " " * (indent + 4) + "pass\n"):
        try:
            return ast.parse(candidate)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
    return None


def _code_lines(response: str) -> list[str]:
    return [ln for ln in response.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def parses(prompt: str, response: str) -> float:
    """1 if the body parses and has code; a response of only blanks or comments scores 0
    (with the docstring it would parse without being a body)."""
    if not _code_lines(response):
        return 0.0
    return 0.0 if _tree(prompt, response) is None else 1.0


def uses_args(prompt: str, response: str) -> float:
    tree = _tree(prompt, response)
    if tree is None:
        return 0.0
    fn = next((n for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if fn is None:
        return 0.0
    a = fn.args
    params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs
              + [v for v in (a.vararg, a.kwarg) if v]]
    params = [p for p in params if p not in ("self", "cls")]
    if not params:
        return 1.0
    body = ast.Module(body=fn.body[1:] if _has_docstring(fn) else fn.body, type_ignores=[])
    read = {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
    return sum(p in read for p in params) / len(params)


def _has_docstring(fn) -> bool:
    first = fn.body[0] if fn.body else None
    return (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str))


def no_repeats(prompt: str, response: str) -> float:
    lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
    if not lines:
        return 0.0
    return 1.0 - (len(lines) - len(set(lines))) / len(lines)


def length(prompt: str, response: str, max_chars: int = 300) -> float:
    return -max(0, len(response) - max_chars) / max_chars
