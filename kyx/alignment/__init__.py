"""Alignment in rounds (ALGORITHMS §9; KwaiYii's RLHF + RLAIF, Llama 2/3's rejection
sampling): sample from a policy, score, keep the best or build preference pairs, train
(DPO, PPO, a reward model), evaluate, repeat.

* policy.py       a policy source on the mesh: N samples per prompt, KL to another policy
* rejection.py    rejection sampling to SFT JSONL (`kyx rejection-sample`)
* preferences.py  preference pairs from scores (best vs worst) or an AI judge (RLAIF)
* evaluate.py     a round's evaluation: reward, KL and win rates against round 0
* iterate.py      the resumable driver (`kyx iterate --config configs/iterate.py:tiny`)
"""
