"""Chat formatting for post-training: special tokens, response and formatting-token masks.

A template turns a conversation (optional system text, earlier turns ``history``, the
final user ``prompt`` and one or more candidate final responses) into token ids plus
flags saying which tokens are learned and which are formatting. Two kinds exist,
chosen by ``kyx.data.templates.make_template`` (``data.records.chat_template``):

* ``kyx`` (this module): kyx's own format. One example (the system turn only when a
  system prompt is given)::

    BOS [<|system|> system <|eot|>] <|user|> prompt <|eot|> <|assistant|> response <|eot|>

  Markers are the tokenizer's reserved control pieces (``CHAT_TOKENS``, ids 4..7 in
  tokenizers trained by kyx). A tokenizer without them (trained before they were
  reserved, or converted from elsewhere) still works: role headers are then the encoded
  marker text (several ordinary tokens) and end of turn is EOS. Either way the template
  knows which positions it inserted, so the masks are exact. ``jinja_source`` is the same
  format as a Hugging Face ``chat_template`` (written by ``kyx convert --to-hf``); with
  the reserved pieces, ``tokenizer.apply_chat_template`` gives exactly these ids.
* ``hf`` (kyx/data/chat_jinja.py): a Hugging Face model's own Jinja ``chat_template``.
  ``auto`` (the default) uses the tokenizer's own template when it has one that is not
  kyx's, else kyx's.

Token flags of ``Encoded``:

* ``response``: the tokens SFT learns: each learned assistant turn's text and its
  closing end of turn (stopping included);
* ``fmt``: formatting tokens: BOS, role headers and end-of-turn markers. Preference
  losses can drop them (Llama 3): they occur in both responses of a pair.

Multi-turn: with ``learn_history`` (SFT) every assistant turn of ``history`` is learned
like the final one; otherwise (preference, feedback, prompts) earlier assistant turns are
context. ``targets(...)`` turns token flags into next-token arrays: ``loss_mask[t] = 1``
when ``tokens[t + 1]`` is a response token, ``format_mask[t] = 1`` when it is a
formatting token.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from kyx.data.tokenizer import CHAT_TOKENS

SYSTEM, USER, ASSISTANT, EOT = CHAT_TOKENS
# kinds of spans: context text (cut first when too long), learned text, formatting,
# learned formatting (the end of turn closing a learned turn)
PROMPT, RESPONSE, FORMAT, CLOSE = 0, 1, 2, 3
LEARNED, FORMATTING = (RESPONSE, CLOSE), (FORMAT, CLOSE)
ROLE_MARKERS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

Span = tuple[int, list[int]]   # (kind, token ids)


@dataclasses.dataclass
class Encoded:
    tokens: np.ndarray     # int32 [n]
    response: np.ndarray   # bool [n]
    fmt: np.ndarray        # bool [n]
    truncated: bool = False


class Template:
    """What every chat template provides; subclasses give the spans of a conversation."""

    tokenizer = None
    stop_id: int = 0   # the token that ends an assistant turn (generation stops there)

    def prompt_spans(self, prompt: str, system: str = "", history: Sequence[dict] = (),
                     learn_history: bool = False) -> list[Span]:
        """Spans from the start up to and including the assistant header of the reply."""
        raise NotImplementedError

    def response_spans(self, response: str, prompt: str, system: str = "",
                       history: Sequence[dict] = ()) -> list[Span]:
        """Spans of the final assistant turn after ``prompt_spans`` (learned)."""
        raise NotImplementedError

    def prompt_ids(self, prompt: str, system: str = "", history: Sequence[dict] = ()
                   ) -> list[int]:
        """Generation input: everything up to the assistant header (sample until
        ``stop_id``)."""
        return [i for _, ids in self.prompt_spans(prompt, system, history) for i in ids]

    def encode(self, prompt: str, response: str, system: str = "", max_len: int = 0,
               history: Sequence[dict] = (), learn_history: bool = False) -> Encoded:
        return self.encode_many(prompt, [response], system, max_len, history, learn_history)[0]

    def encode_many(self, prompt: str, responses: list[str], system: str = "",
                    max_len: int = 0, history: Sequence[dict] = (),
                    learn_history: bool = False) -> list[Encoded]:
        """One prompt with several responses, truncated identically (see ``fit``)."""
        p = self.prompt_spans(prompt, system, history, learn_history)
        rs = [self.response_spans(r, prompt, system, history) for r in responses]
        return [_assemble(p2, r2, t) for p2, r2, t in fit(p, rs, max_len)]


class ChatTemplate(Template):
    """kyx's format (see the module docstring) with the tokenizer's chat markers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.reserved = reserves_chat_tokens(tokenizer)
        if self.reserved:
            self.markers = {m: [tokenizer.special_id(m)] for m in CHAT_TOKENS}
        else:
            self.markers = {m: list(tokenizer.encode(m)) for m in (SYSTEM, USER, ASSISTANT)}
            self.markers[EOT] = [tokenizer.eos_id]
        self.stop_id = self.markers[EOT][0]

    def _turn(self, role: str, text: str, kind: int, close: int) -> list[Span]:
        m = self.markers
        return [(FORMAT, m[ROLE_MARKERS[role]]), (kind, self.tokenizer.encode(text)),
                (close, m[EOT])]

    def prompt_spans(self, prompt: str, system: str = "", history: Sequence[dict] = (),
                     learn_history: bool = False) -> list[Span]:
        spans = [(FORMAT, [self.tokenizer.bos_id])]
        if system:
            spans += self._turn("system", system, PROMPT, FORMAT)
        for turn in history:
            learned = learn_history and turn["role"] == "assistant"
            spans += self._turn(turn["role"], turn["content"], RESPONSE if learned else PROMPT,
                                CLOSE if learned else FORMAT)
        return spans + self._turn("user", prompt, PROMPT, FORMAT) + [
            (FORMAT, self.markers[ASSISTANT])]

    def response_spans(self, response: str, prompt: str = "", system: str = "",
                       history: Sequence[dict] = ()) -> list[Span]:
        return [(RESPONSE, self.tokenizer.encode(response)), (CLOSE, self.markers[EOT])]


def reserves_chat_tokens(tokenizer) -> bool:
    """Whether the tokenizer has kyx's chat control pieces (CHAT_TOKENS) as single ids."""
    special = getattr(tokenizer, "special_id", lambda piece: None)
    return all(special(m) is not None for m in CHAT_TOKENS)


def jinja_source(tokenizer) -> str:
    """kyx's format as a Hugging Face Jinja ``chat_template`` (roles system / user /
    assistant; an empty system message is left out, as kyx does). With the reserved
    markers, transformers' ``apply_chat_template`` then gives exactly kyx's ids; without
    them end of turn is the tokenizer's EOS and HF tokenizes each header together with
    the text that follows, so ids may differ at those boundaries."""
    eot = "'" + EOT + "'" if reserves_chat_tokens(tokenizer) else "eos_token"
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('kyx chat roles are system, user and assistant, not ' "
        "+ message['role']) }}{% endif %}"
        "{% if message['role'] != 'system' or message['content'] %}"
        "{{ '<|' + message['role'] + '|>' + message['content'] + " + eot + " }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}")


def fit(prompt_spans, responses_spans, max_len: int):
    """Truncate to ``max_len`` tokens (0 = no limit): first the text before the final
    response from the left (context and earlier turns, never markers; never below half
    of ``max_len``), then each response from the right. The same prompt cut applies to
    all responses, so pairs stay comparable."""
    plen = sum(len(ids) for _, ids in prompt_spans)
    rlen = max(sum(len(ids) for _, ids in r) for r in responses_spans)
    if not max_len or plen + rlen <= max_len:
        return [(prompt_spans, r, False) for r in responses_spans]
    keep = max(max_len - rlen, min(plen, max_len // 2))
    cut = plen - keep
    spans = []
    for kind, ids in prompt_spans:  # drop text (not markers) from the left
        if kind in (PROMPT, RESPONSE) and cut > 0:
            n = min(cut, len(ids))
            ids, cut = ids[n:], cut - n
        spans.append((kind, ids))
    room = max_len - sum(len(ids) for _, ids in spans)
    out = []
    for r in responses_spans:
        kept, left = [], room
        for kind, ids in r:
            kept.append((kind, ids[:max(left, 0)]))
            left -= len(ids)
        out.append((spans, kept, True))
    return out


def _assemble(prompt_spans, response_spans, truncated: bool) -> Encoded:
    tokens, response, fmt = [], [], []
    for kind, ids in list(prompt_spans) + list(response_spans):
        tokens += ids
        response += [kind in LEARNED] * len(ids)
        fmt += [kind in FORMATTING] * len(ids)
    return Encoded(np.asarray(tokens, np.int32), np.asarray(response, bool),
                   np.asarray(fmt, bool), truncated)


def targets(enc: Encoded, pad_id: int) -> dict[str, np.ndarray]:
    """Next-token arrays of one sequence: tokens, targets, loss_mask, format_mask."""
    n = len(enc.tokens)
    tgt = np.full(n, pad_id, np.int32)
    tgt[:-1] = enc.tokens[1:]
    loss = np.zeros(n, np.float32)
    loss[:-1] = enc.response[1:]
    fmt = np.zeros(n, np.float32)
    fmt[:-1] = enc.fmt[1:]
    return {"tokens": enc.tokens.astype(np.int32), "targets": tgt, "loss_mask": loss,
            "format_mask": fmt}


def first_divergence(a: np.ndarray, b: np.ndarray) -> int:
    """Index of the first position where token arrays differ (len of the shorter if none)."""
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if len(diff) else n
