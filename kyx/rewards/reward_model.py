"""The ``rm`` reward term: a kyx reward-model workdir (configs/rm.py; dense or MoE) scoring
(prompt, response) texts with its own tokenizer and chat template, sharded on the mesh."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kyx import sharding
from kyx.checkpoint import workdir as workdir_lib
from kyx.data.hf_tokenizer import load_tokenizer
from kyx.data.templates import template_of
from kyx.errors import CheckpointError
from kyx.model.config import ModelConfig
from kyx.model.reward import RewardModel, last_token_values
from kyx.rewards.scoring import SequenceScorer, left_cut


class RewardModelScorer:
    """fn(prompts, responses) -> rewards [B] of a kyx RM workdir (its newest checkpoint)."""

    def __init__(self, workdir: str, mesh=None, rules=None, batch_size: int = 32,
                 max_len: int = 256, step: int = -1):
        cfg = workdir_lib.read_config(workdir)
        if cfg.get("trainer") != "rm":
            raise CheckpointError(f"{workdir!r} was trained by {cfg.get('trainer')!r}, not "
                                  "by the reward-model trainer (configs/rm.py)")
        mesh = mesh or sharding.single_device_mesh()
        rules = sharding.get_rules(rules or "dp")
        model = RewardModel(ModelConfig.from_config(cfg.model))
        params = workdir_lib.load_params(workdir, model, mesh, rules, step, name="reward")
        self.template = template_of(load_tokenizer(workdir), cfg)
        self.system, self.max_len = cfg.data.records.system, max_len

        def score(p, tokens_bt, segment_ids_bt):
            values_bt, _ = model.apply({"params": p}, tokens_bt, segment_ids_bt)
            return last_token_values(values_bt, segment_ids_bt)
        self.scorer = SequenceScorer(score, params, mesh, rules, batch_size,
                                     self.template.tokenizer.pad_id)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        seqs = [left_cut(self.template.encode(p, r, self.system).tokens, self.max_len)
                for p, r in zip(prompts, responses)]
        return self.scorer(seqs)
