"""Rejection sampling, pairwise AI feedback and the iterative alignment driver
(kyx/alignment): argmax selection with a planted scorer, an order-biased judge gives ties,
and the driver resumes after kill -9 mid-round without redoing or duplicating anything."""
import hashlib
import json
import os

import numpy as np
import pytest

from kyx import config as config_lib
from kyx import sharding
from kyx.alignment import preferences, rejection
from kyx.alignment.policy import Policy
from kyx.errors import ConfigError
from kyx.rewards.pairwise import PairwiseJudge, symmetrized

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def planted(prompts, responses):
    """A deterministic score per (prompt, response): a hash, so the argmax is arbitrary."""
    return np.asarray([int(hashlib.sha256((p + "\0" + r).encode()).hexdigest()[:8], 16) / 2**32
                       for p, r in zip(prompts, responses)])


def test_rejection_sampling_keeps_exactly_the_argmax(pretrained, tmp_path):
    mesh, rules = sharding.mesh_from_config({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1,
                                             "rules": "dp"})
    policy = Policy(pretrained, mesh, rules, max_new_tokens=8, prompt_len=32)
    prompts = [{"prompt": f"def f{i}(x):", "system": ""} for i in range(5)]
    kept, cands = rejection.rejection_sample(policy, prompts, 4, planted, seed=3,
                                             batch_prompts=2)
    assert [len(c["responses"]) for c in cands] == [4] * 5
    assert len({r for c in cands for r in c["responses"]}) > 5  # real, varied samples
    by_prompt = {k["prompt"]: k for k in kept}
    for c in cands:
        scores = planted([c["prompt"]] * 4, c["responses"])
        np.testing.assert_allclose(c["scores"], scores)
        usable = [s if r.strip() else -np.inf for r, s in zip(c["responses"], scores)]
        if np.isfinite(max(usable)):
            best = int(np.argmax(usable))
            assert by_prompt[c["prompt"]]["response"] == c["responses"][best]
            assert by_prompt[c["prompt"]]["score"] == pytest.approx(scores[best])
    # the same seed samples the same responses; a threshold keeps only high scorers
    again, _ = rejection.rejection_sample(policy, prompts, 4, planted, seed=3, batch_prompts=2)
    assert again == kept
    high, _ = rejection.rejection_sample(policy, prompts, 4, planted, seed=3, batch_prompts=2,
                                         threshold=0.5)
    assert all(k["score"] >= 0.5 for k in high) and len(high) <= len(kept)
    # the file is SFT JSONL that the SFT records loader accepts
    path = tmp_path / "best.jsonl"
    rejection.write_jsonl(str(path), kept)
    from kyx.data.records import parse_line
    assert all(parse_line("sft", line)[0] for line in path.read_text().splitlines())


def test_pairwise_judge_is_order_symmetrised():
    first_always = PairwiseJudge(lambda texts: np.ones(len(texts)))
    p = first_always.prefer(["q", "q"], ["a", "long answer"], ["bb", "x"])
    np.testing.assert_array_equal(p, [0.5, 0.5])  # pure position bias: a tie

    def longer_first(texts):  # prefers the longer of "first" / "second", plus position bias
        out = []
        for t in texts:
            a, b = t.split("Response A:\n")[1].split("\n\nResponse B:\n")
            b = b.split("\n\nAnswer:")[0]
            out.append(0.9 if len(a) > len(b) else 0.3)
        return np.asarray(out)
    judge = PairwiseJudge(longer_first)
    np.testing.assert_allclose(judge.prefer(["q"], ["long answer"], ["x"]),
                               symmetrized([0.9], [0.3]))
    assert judge.prefer(["q"], ["long answer"], ["x"])[0] > 0.5
    cands = [{"prompt": "q", "responses": ["x", "long answer", ""], "scores": [0, 0, 0]}]
    pairs = preferences.judged(cands, judge)
    assert pairs == [{"prompt": "q", "system": "", "chosen": "long answer", "rejected": "x",
                      "margin": pytest.approx(0.6)}]
    best = preferences.best_vs_worst([{"prompt": "q", "responses": ["a", "b", ""],
                                       "scores": [0.2, 0.7, 5.0]}])
    assert best[0]["chosen"] == "b" and best[0]["rejected"] == "a"  # empty never chosen
    with pytest.raises(ConfigError, match="first"):
        PairwiseJudge(lambda t: t, prompt="{prompt} {second}")


def _iterate_args(post_overrides, pretrained):
    data = [o for o in post_overrides if o.startswith("data.")]
    stage = []
    for s in ("dpo", "sft"):
        stage += [f"{s}.train.steps=3", f"{s}.train.eval_every=100", f"{s}.data.batch_size=8",
                  f"{s}.data.seq_len=64", f"{s}.data.eval_batches=1",
                  f"{s}.train.measure_mfu=false", f"{s}.checkpoint.async_save=false",
                  f"{s}.data.records.max_eval=16", f"{s}.data.records.max_train=64"]
    return data + stage + [
        f"policy={pretrained}", "rounds=2", "samples.prompts=8", "samples.n=2",
        "samples.batch_prompts=4", "samples.max_new_tokens=16", "samples.prompt_len=48",
        "eval.prompts=8", "reward.terms=length", "reward.max_chars=20",
        "eval.win_by=parses,length"]


@pytest.mark.slow
def test_iterate_resumes_after_sigkill_without_redoing_rounds(post_overrides, pretrained,
                                                              tmp_path):
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "kyx", "iterate", "--config",
            os.path.join(ROOT, "configs", "iterate.py") + ":tiny", "--workdir", str(tmp_path)]
    args += [f"--config.{o}" for o in _iterate_args(post_overrides, pretrained)]
    # both processes share a persistent compilation cache (outside the workdir): round 1
    # and the resumed run load the programs round 0 compiled
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT, "KYX_COMPILATION_CACHE": "1",
           "KYX_COMPILATION_CACHE_DIR": str(tmp_path.parent / f"{tmp_path.name}_jax_cache")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)
    state = tmp_path / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once round 1 has begun training
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        done = json.loads(state.read_text())["done"] if state.exists() else {}
        if "round_1/data" in done and (tmp_path / "round_1" / "policy").exists():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    round0 = {p: os.stat(tmp_path / "round_0" / p).st_mtime_ns
              for p in ("samples.jsonl", "pairs.jsonl")}
    samples1 = (tmp_path / "round_1" / "samples.jsonl").read_text()
    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    out = resumed.stdout
    assert "round 0" not in out.replace("rounds", "")     # nothing of round 0 ran again
    assert "round 1, sample" not in out and "round 1, data" not in out
    assert "round 1, train" in out and "round 1, eval" in out
    assert {p: os.stat(tmp_path / "round_0" / p).st_mtime_ns for p in round0} == round0
    assert (tmp_path / "round_1" / "samples.jsonl").read_text() == samples1
    assert len(samples1.splitlines()) == 8                 # no duplicated data
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["win/parses"] == 0.5 and rows[0]["kl"] == 0.0
    assert all(0.0 <= r["win/length"] <= 1.0 and np.isfinite(r["sft_eval_loss"]) for r in rows)
    assert (tmp_path / "rounds.png").stat().st_size > 1000
    # a different config on the same workdir is refused; more rounds are not
    with pytest.raises(ConfigError, match="another config"):
        from kyx.alignment.iterate import Driver
        Driver(config_lib.load(os.path.join(ROOT, "configs", "iterate.py") + ":tiny",
                               _iterate_args(post_overrides, pretrained) + ["samples.n=3"]),
               str(tmp_path))


@pytest.mark.slow
def test_iterate_rlaif_rm_retraining_sft_data_and_ppo(post_overrides, pretrained, reward_model,
                                                       tmp_path):
    """Every phase of a round: pairs from the policy judging itself (both orders), the
    reward model retrained on them and used from then on, rejection-sampled SFT, PPO."""
    from kyx.alignment.iterate import Driver
    stage = []
    for s in ("ppo", "rm"):
        stage += [f"{s}.train.steps=2", f"{s}.data.batch_size=8", f"{s}.data.eval_batches=1",
                  f"{s}.train.eval_every=100", f"{s}.checkpoint.async_save=false",
                  f"{s}.data.records.max_train=64", f"{s}.data.records.max_eval=16"]
    cfg = config_lib.load(os.path.join(ROOT, "configs", "iterate.py") + ":tiny",
                          _iterate_args(post_overrides, pretrained) + stage + [
                              "rounds=1", "pairs.source=judge", "judge.source=policy",
                              "retrain_rm=true", "sft_data=true", "algorithm=ppo",
                              "reward.terms=length,rm", f"reward.model_workdir={reward_model}",
                              "eval.win_by=parses,rm", "ppo.data.seq_len=48",
                              "ppo.rl.max_new_tokens=16", "rm.data.seq_len=64"])
    rows = Driver(cfg, str(tmp_path)).run()
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["done"]) == {"round_0/eval_start", "round_0/sample", "round_0/data",
                                  "round_0/rm", "round_0/sft", "round_0/train", "round_0/eval"}
    assert state["reward_model"] == str(tmp_path / "round_0" / "rm")  # later rounds score with it
    assert rows[1]["data/pairs"] > 0 and rows[1]["data/sft"] == 8
    assert rows[0]["win/judge"] == 0.5 and 0.0 <= rows[1]["win/judge"] <= 1.0
    pairs = [json.loads(line) for line in (tmp_path / "round_0" / "pairs.jsonl").open()]
    assert all(p["chosen"] != p["rejected"] and 0 <= p["margin"] <= 1 for p in pairs)
    with pytest.raises(ConfigError, match="needs reward.model_workdir"):
        Driver(config_lib.load(os.path.join(ROOT, "configs", "iterate.py") + ":tiny",
                               _iterate_args(post_overrides, pretrained) + [
                                   "reward.terms=rm"]), str(tmp_path / "other"))
