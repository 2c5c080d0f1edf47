"""`kyx rejection-sample --policy DIR --prompts FILE|mined --n 8 --out FILE`: the best of N
samples per prompt as SFT JSONL (kyx/alignment/rejection.py).

    kyx rejection-sample --policy runs/sft --prompts mined --n 8 --out runs/best.jsonl \\
        [--reward 'parses:1,rm:1' --reward-model runs/rm --threshold 0.5 --max-prompts 256
         --max-new-tokens 48 --temperature 1.0 --top-p 1.0 --seed 0 --candidates FILE]
"""
from __future__ import annotations

import argparse


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="kyx rejection-sample")
    parser.add_argument("--policy", required=True, help="kyx workdir or HF model directory")
    parser.add_argument("--prompts", required=True,
                        help="JSONL of {\"prompt\", \"system\"}, or 'mined' (embedded data)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--out", required=True, help="SFT JSONL of the kept responses")
    parser.add_argument("--candidates", help="also write every sample with its score here")
    parser.add_argument("--reward", default="parses", help="reward terms, e.g. 'parses:1,rm:1'")
    parser.add_argument("--reward-model", default="", help="reward-model workdir (term rm)")
    parser.add_argument("--judge", default="", help="judge model (term judge)")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--max-prompts", type=int, default=0)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)

    from kyx import rewards, sharding
    from kyx.alignment import rejection
    from kyx.alignment.policy import Policy
    from kyx.data import preference
    from kyx.train import defaults

    mesh, rules = sharding.mesh_from_config(defaults.mesh_config())
    if a.prompts == "mined":
        prompts = rejection.mined_prompts(preference.default_config(), "train", a.max_prompts)
    else:
        prompts = rejection.read_prompts(a.prompts, a.max_prompts)
    rcfg = rewards.default_config()
    rcfg.terms, rcfg.model_workdir, rcfg.judge.source = a.reward, a.reward_model, a.judge
    reward = rewards.build(rcfg, mesh, rules)
    policy = Policy(a.policy, mesh, rules, max_new_tokens=a.max_new_tokens,
                    temperature=a.temperature, top_p=a.top_p, prompt_len=a.prompt_len)
    kept, candidates = rejection.rejection_sample(
        policy, prompts, a.n, reward, seed=a.seed, threshold=a.threshold,
        batch_prompts=a.batch_prompts)
    rejection.write_jsonl(a.out, kept)
    if a.candidates:
        rejection.write_jsonl(a.candidates, candidates)
    best = sum(r["score"] for r in kept) / max(len(kept), 1)
    mean = sum(sum(c["scores"]) / len(c["scores"]) for c in candidates) / len(candidates)
    print(f"wrote {a.out}: {len(kept)} of {len(prompts)} prompts kept; mean score of all "
          f"samples {mean:.4g}, of the kept {best:.4g}", flush=True)
    return 0
