"""Which chat template a run uses (``data.records.chat_template``): a registry of
template kinds and the ``auto`` rule.

* ``kyx``: kyx's own format with reserved markers (kyx/data/chat.py);
* ``hf``: the model's own Jinja ``chat_template`` (kyx/data/chat_jinja.py);
* ``auto`` (default): ``hf`` when the tokenizer has a template of its own that is not
  kyx's format (an imported Hugging Face model), else ``kyx``.

Training, sampling (kyx.load, alignment policies) and reward models pick the template the
same way from the tokenizer and the run's config, so a policy is sampled in the format it
was trained in.
"""
from __future__ import annotations

from kyx.data.chat import ChatTemplate, Template, jinja_source
from kyx.data.chat_jinja import JinjaTemplate
from kyx.registry import Registry

TEMPLATES = Registry("data.records.chat_template")
TEMPLATES.register("kyx")(ChatTemplate)
TEMPLATES.register("hf")(JinjaTemplate.of)
CHOICES = ("auto",)   # + TEMPLATES.names()


def own_template(tokenizer) -> str | None:
    """The tokenizer's own chat template (Hugging Face ``chat_template``) when it has one
    that is not kyx's format, else None."""
    source = getattr(tokenizer, "chat_template", None)
    return source if source and source != jinja_source(tokenizer) else None


def make_template(tokenizer, choice: str = "auto") -> Template:
    """The chat template named by ``choice`` (see the module docstring)."""
    if choice == "auto":
        choice = "hf" if own_template(tokenizer) else "kyx"
    return TEMPLATES.get(choice)(tokenizer)


def template_of(tokenizer, config) -> Template:
    """The template a run with ``config`` (a workdir's resolved config) trained with."""
    data = config.get("data") if config is not None else None
    records = (data.get("records") if data else None) or {}
    return make_template(tokenizer, records.get("chat_template", "auto"))
