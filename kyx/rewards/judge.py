"""The ``judge`` reward term: an AI judge (RLAIF). Any kyx workdir or Hugging Face causal
LM is asked a rubric prompt about (prompt, response); the score is its probability of the
positive answer token against the negative one, p(pos) / (p(pos) + p(neg)), at the next
token after the rubric."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kyx import sharding
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.data.templates import template_of
from kyx.errors import ConfigError
from kyx.interop import sources
from kyx.model.transformer import Decoder
from kyx.rewards.scoring import SequenceScorer, left_cut


class AIJudge:
    def __init__(self, source: str, prompt: str, positive: str = "Yes", negative: str = "No",
                 mesh=None, rules=None, batch_size: int = 32, max_len: int = 256,
                 chat: bool = False):
        mesh = mesh or sharding.single_device_mesh()
        rules = sharding.get_rules(rules or "dp")
        model = Decoder(sources.model_config(source))
        params = sources.load_params(source, model, mesh, rules)
        self.tokenizer = load_tokenizer(source)
        self.template = template_of(self.tokenizer, sources.run_config(source)) if chat else None
        self.prompt, self.max_len = prompt, max_len
        pos, neg = (self._answer_id(a) for a in (positive, negative))
        if pos == neg:
            raise ConfigError(f"the judge's answers {positive!r} and {negative!r} start with "
                              "the same token")

        def score(p, tokens_bt, segment_ids_bt):
            logits_btv, _ = model.apply({"params": p}, tokens_bt, segment_ids_bt)
            last_b = jnp.maximum(jnp.sum(segment_ids_bt > 0, axis=-1) - 1, 0)
            z_bv = jnp.take_along_axis(logits_btv, last_b[:, None, None], axis=1)[:, 0]
            z = z_bv.astype(jnp.float32)
            return jax.nn.sigmoid(z[:, pos] - z[:, neg])  # p(pos) / (p(pos) + p(neg))
        self.scorer = SequenceScorer(score, params, mesh, rules, batch_size,
                                     self.tokenizer.pad_id or 0)

    def _answer_id(self, answer: str) -> int:
        """The answer's first token that is not bare whitespace (SentencePiece may start
        with a lone word-boundary piece)."""
        for ids in (self.tokenizer.encode(answer), self.tokenizer.encode(" " + answer)):
            for i in ids:
                if self.tokenizer.decode([int(i)]).strip():
                    return int(i)
        raise ConfigError(f"the judge's tokenizer has no token for the answer {answer!r}")

    def ids_of(self, text: str) -> list[int]:
        """Token ids of a filled-in rubric (a user turn with ``chat``)."""
        if self.template is not None:
            return self.template.prompt_ids(text)
        bos = self.tokenizer.bos_id
        return ([] if bos is None else [bos]) + list(self.tokenizer.encode(text))

    def ids(self, prompt: str, response: str) -> list[int]:
        return self.ids_of(self.prompt.format(prompt=prompt, response=response))

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """p(positive) / (p(positive) + p(negative)) after each filled-in rubric."""
        return self.scorer([left_cut(self.ids_of(t), self.max_len) for t in texts])

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.score_texts([self.prompt.format(prompt=p, response=r)
                                 for p, r in zip(prompts, responses)])
