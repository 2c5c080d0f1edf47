"""Chat formatting for post-training: special tokens, response and formatting-token masks.

One example (the system turn only when a system prompt is given)::

    BOS [<|system|> system <|eot|>] <|user|> prompt <|eot|> <|assistant|> response <|eot|>

Markers are the tokenizer's reserved control pieces (``CHAT_TOKENS``, ids 4..7 in
tokenizers trained by kyx). A tokenizer without them (trained before they were reserved,
or converted from elsewhere) still works: role headers are then the encoded marker text
(several ordinary tokens) and end of turn is EOS. Either way the template knows which
positions it inserted, so the masks are exact.

Token flags of ``Encoded``:

* ``response``: the response tokens and the closing end of turn (what SFT learns to
  emit, stopping included);
* ``fmt``: formatting tokens: BOS, role headers and end-of-turn markers. Preference
  losses can drop them (Llama 3): they occur in both responses of a pair.

``targets(...)`` turns token flags into next-token arrays: ``loss_mask[t] = 1`` when
``tokens[t + 1]`` is a response token, ``format_mask[t] = 1`` when it is a formatting token.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kyx.data.tokenizer import CHAT_TOKENS

SYSTEM, USER, ASSISTANT, EOT = CHAT_TOKENS
PROMPT, RESPONSE, FORMAT = 0, 1, 2   # kinds of spans


@dataclasses.dataclass
class Encoded:
    tokens: np.ndarray     # int32 [n]
    response: np.ndarray   # bool [n]
    fmt: np.ndarray        # bool [n]
    truncated: bool = False


class ChatTemplate:
    """Encodes (system, prompt, response) with the tokenizer's chat markers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        special = getattr(tokenizer, "special_id", lambda piece: None)
        ids = {m: special(m) for m in CHAT_TOKENS}
        self.reserved = all(i is not None for i in ids.values())
        if self.reserved:
            self.markers = {m: [ids[m]] for m in CHAT_TOKENS}
        else:
            self.markers = {m: list(tokenizer.encode(m)) for m in (SYSTEM, USER, ASSISTANT)}
            self.markers[EOT] = [tokenizer.eos_id]
        self.stop_id = self.markers[EOT][0]

    def prompt_spans(self, prompt: str, system: str = "") -> list[tuple[int, list[int]]]:
        """(kind, ids) spans from BOS up to and including the assistant header."""
        enc, m = self.tokenizer.encode, self.markers
        spans = [(FORMAT, [self.tokenizer.bos_id])]
        if system:
            spans += [(FORMAT, m[SYSTEM]), (PROMPT, enc(system)), (FORMAT, m[EOT])]
        spans += [(FORMAT, m[USER]), (PROMPT, enc(prompt)), (FORMAT, m[EOT]),
                  (FORMAT, m[ASSISTANT])]
        return spans

    def response_spans(self, response: str) -> list[tuple[int, list[int]]]:
        return [(RESPONSE, self.tokenizer.encode(response)), (RESPONSE, self.markers[EOT])]

    def prompt_ids(self, prompt: str, system: str = "") -> list[int]:
        """Generation input: BOS ... <|assistant|> (sample until ``stop_id``)."""
        return [i for _, ids in self.prompt_spans(prompt, system) for i in ids]

    def encode(self, prompt: str, response: str, system: str = "",
               max_len: int = 0) -> Encoded:
        return self.encode_many(prompt, [response], system, max_len)[0]

    def encode_many(self, prompt: str, responses: list[str], system: str = "",
                    max_len: int = 0) -> list[Encoded]:
        """One prompt with several responses, truncated identically (see ``fit``)."""
        p = self.prompt_spans(prompt, system)
        rs = [self.response_spans(r) for r in responses]
        return [_assemble(p2, r2, t) for p2, r2, t in fit(p, rs, max_len)]


def fit(prompt_spans, responses_spans, max_len: int):
    """Truncate to ``max_len`` tokens (0 = no limit): first the prompt text from the left
    (never below half of ``max_len``), then each response from the right. The same
    prompt cut applies to all responses, so pairs stay comparable."""
    plen = sum(len(ids) for _, ids in prompt_spans)
    rlen = max(sum(len(ids) for _, ids in r) for r in responses_spans)
    if not max_len or plen + rlen <= max_len:
        return [(prompt_spans, r, False) for r in responses_spans]
    keep = max(max_len - rlen, min(plen, max_len // 2))
    cut = plen - keep
    spans = []
    for kind, ids in prompt_spans:  # drop prompt text (not markers) from the left
        if kind == PROMPT and cut > 0:
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
    for i, (kind, ids) in enumerate(list(prompt_spans) + list(response_spans)):
        closing = i == len(prompt_spans) + len(response_spans) - 1  # the final end of turn
        tokens += ids
        response += [kind == RESPONSE] * len(ids)
        fmt += [kind == FORMAT or closing] * len(ids)
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
