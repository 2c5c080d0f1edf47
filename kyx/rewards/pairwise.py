"""Pairwise AI feedback (RLAIF): which of two responses a judge prefers, asked both ways.

A judge model sees the rubric with the two responses as "first" and "second" and is scored
by p(first answer) / (p(first) + p(second)) at the next token (kyx/rewards/judge.py).
Judges favour a position; asking with the responses swapped and averaging cancels it:

    P(a ≻ b) = ½ [ p_first(a, b) + (1 − p_first(b, a)) ]

so a judge that always picks the first position gives exactly ½, a tie. The judge may be
the policy itself (self-rewarding) or any kyx / Hugging Face model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from kyx.errors import ConfigError

DEFAULT_PAIRWISE_PROMPT = (
    "Which response is the better Python function body for the signature and docstring? "
    "Answer A or B.\n\n{prompt}\n\nResponse A:\n{first}\n\nResponse B:\n{second}\n\n"
    "Answer:")


def symmetrized(p_first_ab: np.ndarray, p_first_ba: np.ndarray) -> np.ndarray:
    """P(a ≻ b) from a judge's preference for the first position, asked as (a, b) and as
    (b, a)."""
    return 0.5 * (np.asarray(p_first_ab, np.float64) + 1.0 - np.asarray(p_first_ba,
                                                                         np.float64))


class PairwiseJudge:
    """``judge.prefer(prompts, a, b) -> P(a ≻ b)`` [N], order-symmetrised.

    ``score_texts(texts) -> p(first)`` is any judge scoring filled-in rubrics (an
    ``AIJudge`` with answers ``first`` / ``second``, e.g. "A" / "B")."""

    def __init__(self, score_texts: Callable[[Sequence[str]], np.ndarray],
                 prompt: str = DEFAULT_PAIRWISE_PROMPT):
        for field in ("{first}", "{second}"):
            if field not in prompt:
                raise ConfigError(f"the pairwise judge prompt must contain {field}")
        self.score_texts, self.prompt = score_texts, prompt

    def prefer(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        fill = lambda x, y: [self.prompt.format(prompt=p, first=u, second=v)  # noqa: E731
                             for p, u, v in zip(prompts, x, y)]
        return symmetrized(self.score_texts(fill(a, b)), self.score_texts(fill(b, a)))


def load_pairwise_judge(source: str, prompt: str = DEFAULT_PAIRWISE_PROMPT, first: str = "A",
                        second: str = "B", mesh=None, rules=None, batch_size: int = 32,
                        max_len: int = 512, chat: bool = False) -> PairwiseJudge:
    """A PairwiseJudge backed by a kyx workdir or Hugging Face model directory."""
    from kyx.rewards.judge import AIJudge
    judge = AIJudge(source, prompt, first, second, mesh, rules, batch_size, max_len, chat=chat)
    return PairwiseJudge(judge.score_texts, prompt)
