"""Rewards for RL and rejection sampling: one interface, (prompts, responses) -> scores [B].

A reward is a weighted sum of terms named in ``reward.terms`` ("parses:1,no_repeats:0.5",
weight 1 when omitted). Each term comes from ``REWARDS`` (name -> factory(cfg, mesh,
rules) -> fn(prompts, responses) -> float32 [B]):

* programmatic verifiers of the embedded code data (kyx/rewards/verifiers.py): ``parses``,
  ``uses_args``, ``no_repeats``, ``length``;
* ``rm``: a kyx reward-model workdir (``reward.model_workdir``, from configs/rm.py, dense
  or MoE), run sharded on the mesh (kyx/rewards/reward_model.py);
* ``judge``: an AI judge, any kyx or Hugging Face model asked ``reward.judge.prompt`` and
  scored by the probability of its positive answer token (kyx/rewards/judge.py).

Texts in, scores out: a model-based reward tokenizes with its own tokenizer, so it need
not share the policy's. Adding a term is a factory plus its ``@REWARDS.register`` line.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import ml_collections
import numpy as np

from kyx.errors import ConfigError
from kyx.registry import Registry
from kyx.rewards import verifiers

REWARDS = Registry("reward term")

DEFAULT_JUDGE_PROMPT = (
    "Is the following a correct, non-repetitive Python function body for the given "
    "signature and docstring? Answer Yes or No.\n\n{prompt}\n{response}\n\nAnswer:")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "terms": "parses",          # "name[:weight],..." from REWARDS
        "max_chars": 300,           # `length`: responses longer than this are penalised
        "model_workdir": "",        # `rm`: a kyx reward-model workdir
        "batch_size": 32,           # `rm` / `judge`: sequences per forward pass
        "max_len": 256,             # `rm` / `judge`: tokens per scored sequence (left-cut)
        "judge": ml_collections.ConfigDict({
            "source": "",           # kyx workdir or Hugging Face model directory
            "prompt": DEFAULT_JUDGE_PROMPT,   # with {prompt} and {response}
            "positive": "Yes",
            "negative": "No",
            "chat": False,          # ask as a user turn of the chat template
        }),
    })


def parse_terms(spec: str) -> list[tuple[str, float]]:
    """'parses:1,no_repeats:0.5' -> [('parses', 1.0), ('no_repeats', 0.5)]."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        REWARDS.get(name.strip())  # unknown names fail here, with suggestions
        try:
            out.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise ConfigError(f"reward.terms: bad weight {weight!r} for {name!r} "
                              "(expected name:number)") from None
    if not out:
        raise ConfigError("reward.terms is empty; name at least one term, e.g. 'parses'")
    return out


@dataclasses.dataclass
class Reward:
    """The configured weighted sum; ``__call__`` -> (total_b, {term: values_b})."""
    terms: list[tuple[str, float, Callable]]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]):
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        parts = {name: np.asarray(fn(list(prompts), list(responses)), np.float32)
                 for name, _, fn in self.terms}
        total = np.zeros(len(prompts), np.float32)
        for name, weight, _ in self.terms:
            total += np.float32(weight) * parts[name]
        return total, parts


def build(cfg, mesh=None, rules=None) -> Reward:
    """The reward named by ``cfg.terms`` (model-based terms placed on ``mesh``)."""
    return Reward([(name, weight, REWARDS.get(name).fn(cfg, mesh, rules))
                   for name, weight in parse_terms(cfg.terms)])


def rowwise(fn: Callable[[str, str], float]) -> Callable:
    """A per-(prompt, response) function as a batch reward."""
    return lambda prompts, responses: np.asarray(
        [fn(p, r) for p, r in zip(prompts, responses)], np.float32)


for _name in ("parses", "uses_args", "no_repeats"):
    REWARDS.register(_name)(lambda cfg, mesh, rules, f=getattr(verifiers, _name): rowwise(f))


@REWARDS.register("length")
def _length(cfg, mesh, rules):
    return rowwise(lambda p, r: verifiers.length(p, r, cfg.max_chars))


@REWARDS.register("rm")
def _reward_model(cfg, mesh, rules):
    from kyx.rewards.reward_model import RewardModelScorer
    if not cfg.model_workdir:
        raise ConfigError("reward term 'rm' needs reward.model_workdir (a kyx reward-model "
                          "workdir trained with configs/rm.py)")
    return RewardModelScorer(cfg.model_workdir, mesh, rules, cfg.batch_size, cfg.max_len)


@REWARDS.register("judge")
def _judge(cfg, mesh, rules):
    from kyx.rewards.judge import AIJudge
    if not cfg.judge.source:
        raise ConfigError("reward term 'judge' needs reward.judge.source (a kyx workdir or a "
                          "Hugging Face model directory)")
    j = cfg.judge
    if "{response}" not in j.prompt:
        raise ConfigError("reward.judge.prompt must contain {response} (and usually {prompt})")
    return AIJudge(j.source, j.prompt, j.positive, j.negative, mesh, rules, cfg.batch_size,
                   cfg.max_len, chat=j.chat)
