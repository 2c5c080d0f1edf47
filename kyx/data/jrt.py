"""JRT prompting ("Just read twice", Arora et al. 2024, arXiv 2407.05483): repeat the
context before the question, so a model with a fixed-size state (linear attention, SSMs)
reads the context a second time already knowing what it holds (+11.0 points averaged over
16 recurrent LMs x 6 in-context tasks in the paper).

``jrt_prompt(context, question)`` fills a template with the fields ``{context}`` and
``{question}``; the default reads the context twice, then asks. ``fda_prompt`` is the
paper's FDA template (lm-eval-harness ``based_fda_twice``): "Information about {Key}.
{doc}\\n{doc} {Key}:" with the document's trailing "key:" and period handling of the
reference.
"""
from __future__ import annotations

import string

from kyx.errors import ConfigError

DEFAULT_TEMPLATE = "{context}\n{context}\n{question}"
FIELDS = ("context", "question")


def check_template(template: str) -> str:
    """``template`` if it is a format string using exactly ``{context}`` and
    ``{question}`` (each at least once), else a ConfigError saying what is wrong."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template)
                 if name is not None}
    except ValueError as e:
        raise ConfigError(f"JRT template {template!r} is not a format string: {e}") from None
    if names != set(FIELDS):
        raise ConfigError(f"JRT template {template!r} must use exactly the fields "
                          f"{{context}} and {{question}}, found {sorted(names) or 'none'}")
    return template


def jrt_prompt(context: str, question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt with ``context`` repeated as ``template`` says (default: twice, then
    the question)."""
    return check_template(template).format(context=context, question=question)


def fda_prompt(doc: str, key: str) -> str:
    """The paper's FDA JRT prompt for extracting attribute ``key`` from ``doc``: the
    document without a trailing "key:" (case-insensitive), edge newlines and periods,
    ending in "."; then "Information about {Key}. {doc}\\n{doc} {Key}:" with the key's
    first letter upper-cased."""
    suffix = key + ":"
    while doc.lower().endswith(suffix.lower()):
        doc = doc[: -len(suffix)]
    upper = key[:1].upper() + key[1:]
    doc = doc.strip("\n").strip(".")
    if not doc.endswith("."):
        doc += "."
    return f"Information about {upper}. {doc}\n{doc} {upper}:"
