"""A Hugging Face model's own Jinja chat template, with response and formatting masks.

**Rendering** follows transformers' ``apply_chat_template``: a sandboxed Jinja
environment (``ImmutableSandboxedEnvironment``, ``trim_blocks``, ``lstrip_blocks``, loop
controls), ``raise_exception(msg)``, a ``tojson`` filter that does not escape HTML,
``strftime_now(fmt)``, ``{% generation %}`` blocks rendered as their body, and the
variables ``messages``, ``add_generation_prompt``, ``bos_token`` / ``eos_token`` /
``unk_token`` / ``pad_token`` (those the tokenizer config names), ``tools`` and
``documents`` (None). A conversation the template rejects is a DataError naming it.

**Masks** come from rendering the conversation at each turn boundary: ``H_k``, the
messages before assistant turn k with the generation prompt (what the model is given
when it writes turn k), and ``F_k``, the same messages plus turn k. Each rendering must
extend the previous one (``H_k`` starts with ``F_{k-1}``, ``F_k`` with ``H_k``); the text
between them is one segment:

* ``F_{k-1} .. H_k``: system / user turns and the assistant header: context (not
  learned); each message's text in it is found by search and marked cuttable (truncation
  removes context text from the left, never template markup);
* ``H_k .. F_k``: assistant turn k. Where its text sits is found by rendering the turn
  once more with a sentinel text: what comes before and after the sentinel is the
  template's own markup (e.g. ``<|eot_id|>``), so the turn's text is what lies between,
  even when the template trims or rewrites it. Learned turns (the final response; with
  SFT every assistant turn) learn the whole segment, markup included (stopping is
  learned); the markup is flagged as formatting, which preference losses can drop.

Each segment piece is tokenized on its own (special tokens written in the text become
their ids) and the ids are concatenated, as TRL tokenizes prompt and completion
separately: the prompt ids are exactly what generation starts from. They equal
``apply_chat_template(..., tokenize=True)``'s ids of the whole text whenever piece
boundaries are token boundaries, which holds for templates that end headers and turns
with special tokens or newlines (Llama 3, Qwen2 / ChatML, kyx's own).

Limits: templates whose rendering of earlier turns depends on later ones (a system
prompt moved into the last user turn, reasoning stripped from earlier assistant turns)
break the prefix property and are refused with an error naming the turn; a template
that changes a turn's text depending on its content may defeat the sentinel, and then
the whole assistant segment is learned with no formatting flagged; context text that
also occurs in the template's markup before it may be located there (only truncation
uses that location). With a SentencePiece tokenizer each piece is encoded by
SentencePiece (a dummy-prefix model adds its prefix per piece), which can differ from
transformers' tokenization at piece starts.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Sequence

from kyx.data import records
from kyx.data.chat import CLOSE, FORMAT, PROMPT, RESPONSE, Span, Template
from kyx.data.hf_tokenizer import encode_with_special_tokens, special_ids
from kyx.errors import ConfigError, DataError

SENTINEL = "KYXSENTINELTURNTEXT"   # stands for a turn's text when locating it


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
    """A compiled Jinja template in transformers' chat-template environment."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): the body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body
                                          ).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"the model's chat template is not valid Jinja: {e}") from None


@functools.lru_cache(maxsize=4096)
def _render(source: str, variables: tuple, conversation: tuple, generation_prompt: bool
            ) -> str:
    import jinja2

    msgs = [{"role": r, "content": c} for r, c in conversation]
    try:
        return compile_template(source).render(
            messages=msgs, add_generation_prompt=generation_prompt, tools=None,
            documents=None, **dict(variables))
    except jinja2.TemplateError as e:
        roles = " -> ".join(r for r, _ in conversation)
        raise DataError(f"the model's chat template rejects a conversation of turns {roles} "
                        f"({type(e).__name__}: {e})") from None


class JinjaTemplate(Template):
    """The tokenizer's own chat template (``tokenizer.chat_template``)."""

    def __init__(self, tokenizer, source: str, variables: dict[str, str]):
        self.tokenizer, self.source = tokenizer, source
        self.variables = tuple(sorted(variables.items()))
        self._specials = special_ids(tokenizer)
        self.stop_id = self._stop_id()

    @classmethod
    def of(cls, tokenizer) -> "JinjaTemplate":
        source = getattr(tokenizer, "chat_template", None)
        if not source:
            raise ConfigError("data.records.chat_template='hf' needs the model's own chat "
                              "template (chat_template in tokenizer_config.json, or "
                              "chat_template.jinja); this tokenizer has none: use 'kyx' or "
                              "'auto'")
        return cls(tokenizer, source, template_variables(tokenizer))

    def render(self, msgs: Sequence[dict], generation_prompt: bool) -> str:
        conv = tuple((m["role"], m["content"]) for m in msgs)
        return _render(self.source, self.variables, conv, generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return encode_with_special_tokens(self.tokenizer, text, self._specials) if text else []

    def _stop_id(self) -> int:
        """The first special token after an assistant turn's text (``<|eot_id|>``,
        ``<|im_end|>``, kyx's ``<|eot|>``), else the tokenizer's EOS."""
        msgs = [{"role": "user", "content": "hi"}]
        pieces = self._assistant_pieces(msgs, SENTINEL[::-1], learned=True)
        after = pieces[-1][1] if pieces[-1][0] == CLOSE else ""
        ids = set(self._specials.values())
        return next((i for i in self._encode(after) if i in ids), self.tokenizer.eos_id)

    # --------------------------------------------------------------------- segments
    def _extends(self, before: str, after: str, msgs: Sequence[dict]) -> str:
        if not after.startswith(before):
            roles = " -> ".join(m["role"] for m in msgs)
            raise DataError(f"the model's chat template renders the turns before the last of "
                            f"{roles} differently once the last is added, so kyx cannot tell "
                            "which tokens belong to which turn (kyx/data/chat_jinja.py, "
                            "limits); use data.records.chat_template=kyx")
        return after[len(before):]

    def _context_pieces(self, segment: str, msgs: Sequence[dict]) -> list[tuple[int, str]]:
        """Context messages' text (PROMPT) and the markup around it (FORMAT)."""
        out, pos = [], 0
        for m in msgs:
            for text in (m["content"], m["content"].strip()):
                at = segment.find(text, pos) if text else -1
                if at >= 0:
                    out += [(FORMAT, segment[pos:at]), (PROMPT, text)]
                    pos = at + len(text)
                    break
        return out + [(FORMAT, segment[pos:])]

    def _assistant_pieces(self, before: Sequence[dict], content: str, learned: bool
                          ) -> list[tuple[int, str]]:
        """The pieces of an assistant turn after ``before`` (rendered with the
        generation prompt): markup before its text, the text, markup after."""
        head = self.render(before, True)
        turn = {"role": "assistant", "content": content}
        seg = self._extends(head, self.render([*before, turn], False), [*before, turn])
        probe = self._extends(head, self.render([*before, {**turn, "content": SENTINEL}],
                                                False), [*before, turn])
        text_kind, markup_kind = (RESPONSE, CLOSE) if learned else (PROMPT, FORMAT)
        pre, sentinel, post = probe.partition(SENTINEL)
        if (sentinel and seg.startswith(pre) and seg.endswith(post)
                and len(seg) >= len(pre) + len(post)):
            return [(markup_kind, pre), (text_kind, seg[len(pre):len(seg) - len(post)]),
                    (markup_kind, post)]
        return [(text_kind, seg)]   # the text cannot be told from the markup

    def _spans(self, pieces: list[tuple[int, str]]) -> list[Span]:
        return [(kind, self._encode(text)) for kind, text in pieces if text]

    def prompt_spans(self, prompt: str, system: str = "", history: Sequence[dict] = (),
                     learn_history: bool = False) -> list[Span]:
        msgs = records.to_messages({"prompt": prompt, "system": system, "history": history})
        pieces, done, start = [], "", 0
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            head = self.render(msgs[:k], True)
            pieces += self._context_pieces(self._extends(done, head, msgs[:k]), msgs[start:k])
            pieces += self._assistant_pieces(msgs[:k], m["content"], learn_history)
            done, start = self.render(msgs[:k + 1], False), k + 1
        head = self.render(msgs, True)
        pieces += self._context_pieces(self._extends(done, head, msgs), msgs[start:])
        return self._spans(pieces)

    def response_spans(self, response: str, prompt: str, system: str = "",
                       history: Sequence[dict] = ()) -> list[Span]:
        msgs = records.to_messages({"prompt": prompt, "system": system, "history": history})
        return self._spans(self._assistant_pieces(msgs, response, learned=True))


def template_variables(tokenizer) -> dict[str, str]:
    """bos_token / eos_token / unk_token / pad_token for rendering: the tokenizer config's
    texts, else the pieces of the tokenizer's ids."""
    out = dict(getattr(tokenizer, "special_tokens", None) or {})
    piece = getattr(tokenizer, "id_to_piece", None)
    for name in ("bos", "eos", "pad"):
        i = getattr(tokenizer, f"{name}_id", None)
        if f"{name}_token" not in out and piece is not None and i is not None and i >= 0:
            out[f"{name}_token"] = piece(i)
    return {k: v for k, v in out.items() if v is not None}
