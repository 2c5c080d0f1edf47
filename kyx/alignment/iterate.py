"""The iterative RLHF + RLAIF driver: rounds of sample -> score -> data -> train -> evaluate.

    kyx iterate --config configs/iterate.py:tiny --workdir runs/iterate --config.policy=runs/sft

Round k (``<workdir>/round_k/``) starts from policy k (round 0: ``policy``) and makes
policy k + 1, in phases:

1. ``sample``: ``samples.n`` responses for each of ``samples.prompts`` training prompts (a
   round-specific draw), scored by ``reward`` -> ``samples.jsonl``;
2. ``data``: preference pairs (``pairs.source``: ``reward``, best vs worst; or ``judge``,
   an AI judge asked both ways, the policy itself when ``judge.source = "policy"``) ->
   ``pairs.jsonl``, and with ``sft_data`` the best sample per prompt (rejection sampling)
   -> ``sft.jsonl``;
3. ``rm`` (``retrain_rm``): the reward model retrained on the new pairs (from the current
   one), used to score the following rounds;
4. ``sft`` (``sft_data``): SFT of policy k on the rejection-sampled data;
5. ``train``: ``algorithm`` = ``dpo`` on the pairs or ``ppo`` on ``reward``, from policy k
   (after its SFT) -> ``round_k/policy``: policy k + 1;
6. ``eval``: policy k + 1 against policy 0 on held-out prompts (kyx/alignment/evaluate.py).

Every phase's outputs are written atomically and recorded in ``<workdir>/state.json`` when
it completes; a killed driver resumes at the first unfinished phase (training phases
resume from their own checkpoints), so no finished round is redone and no data is
duplicated. The resolved config is kept: resuming with a different one is an error (more
``rounds`` are allowed). ``results.json`` / ``results.md`` / ``rounds.png`` are rewritten
after every evaluation.
"""
from __future__ import annotations

import copy
import json
import os

import ml_collections
import numpy as np

from kyx import config as config_lib
from kyx import rewards as rewards_lib
from kyx import sharding
from kyx.alignment import preferences, rejection
from kyx.checkpoint.workdir_lock import WorkdirLock
from kyx.alignment.evaluate import evaluate
from kyx.alignment.policy import Policy
from kyx.data import preference as data_pref
from kyx.distributed import is_writer
from kyx.errors import ConfigError
from kyx.fileio import atomic_write
from kyx.logs import get_logger
from kyx.registry import Registry
from kyx.rewards.pairwise import DEFAULT_PAIRWISE_PROMPT, load_pairwise_judge
from kyx.train import defaults

log = get_logger(__name__)
ALGORITHMS = ("dpo", "ppo")
PAIR_SOURCES = Registry("pairs.source")
PAIR_SOURCES.register("reward")(lambda driver, cands, k: preferences.best_vs_worst(
    cands, driver.cfg.pairs.min_margin))
PAIR_SOURCES.register("judge")(lambda driver, cands, k: preferences.judged(
    cands, driver.judge(driver.policy_source(k)), driver.cfg.pairs.min_margin))


def default_config() -> ml_collections.ConfigDict:
    """The driver's own sections; the trainer sections (dpo, ppo, sft, rm) come from their
    config files (configs/iterate.py)."""
    return ml_collections.ConfigDict({
        "policy": "",            # the round-0 policy: a kyx workdir (e.g. an SFT run)
        "rounds": 3,
        "seed": 0,
        "algorithm": "dpo",      # dpo | ppo
        "samples": ml_collections.ConfigDict({
            "prompts": 128, "n": 4, "batch_prompts": 16, "max_new_tokens": 48,
            "temperature": 1.0, "top_k": 0, "top_p": 1.0, "prompt_len": 64}),
        "reward": rewards_lib.default_config(),   # scores the samples
        "pairs": ml_collections.ConfigDict({"source": "reward", "min_margin": 0.0}),
        "judge": ml_collections.ConfigDict({
            "source": "",        # kyx / HF model, or "policy" (self-rewarding)
            "prompt": DEFAULT_PAIRWISE_PROMPT, "first": "A", "second": "B", "chat": False}),
        "sft_data": False,       # rejection-sampled SFT before each round's DPO / PPO
        "retrain_rm": False,     # retrain reward.model_workdir on each round's pairs
        "eval": ml_collections.ConfigDict({
            "prompts": 64, "seed": 1234,
            "win_by": "parses",  # reward terms for win rates vs round 0 ("parses,rm")
            "sft_loss": True}),  # eval loss on held-out SFT records
        "data": data_pref.default_config(),
        "mesh": defaults.mesh_config(),
    })


class Driver:
    def __init__(self, cfg, workdir: str):
        self.cfg, self.workdir = cfg, workdir
        if not cfg.policy:
            raise ConfigError("set policy: the round-0 policy workdir (e.g. --config.policy="
                              "runs/sft)")
        if cfg.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {ALGORITHMS}, got {cfg.algorithm!r}")
        PAIR_SOURCES.get(cfg.pairs.source)
        named = [n for spec in (cfg.reward.terms, cfg.eval.win_by)
                 for n, _ in rewards_lib.parse_terms(spec)]
        if "rm" in named and not cfg.reward.model_workdir:
            raise ConfigError("the reward term 'rm' needs reward.model_workdir, a reward model "
                              "to score round 0 with (retrain_rm then retrains it each round)")
        if cfg.pairs.source == "judge" and not cfg.judge.source:
            raise ConfigError("pairs.source=judge needs judge.source (a kyx / HF model, or "
                              "'policy' for self-rewarding)")
        self.mesh, self.rules = sharding.mesh_from_config(cfg.mesh)
        self.lock = WorkdirLock(workdir, "iterate")  # one driver per workdir, until run() ends
        if is_writer():
            self.lock.acquire()
        try:
            self.state_path = os.path.join(workdir, "state.json")
            self.state = self._load_state()
        except BaseException:
            self.lock.release()
            raise

    # ------------------------------------------------------------------ state
    def _load_state(self) -> dict:
        resolved = config_lib.to_dict(self.cfg)
        if not os.path.exists(self.state_path):
            state = {"config": resolved, "done": {}, "reward_model": self.cfg.reward.model_workdir}
            self._write(state)
            return state
        with open(self.state_path) as f:
            state = json.load(f)
        old, new = dict(state["config"]), dict(resolved)
        old.pop("rounds"), new.pop("rounds")
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{self.workdir} was started with another config (sections "
                              f"{diff} differ); use a new --workdir (only rounds may change)")
        state["config"] = resolved
        return state

    def _write(self, state=None) -> None:
        atomic_write(self.state_path, json.dumps(state or self.state, indent=1))

    def phase(self, k: int, name: str, fn):
        """Run ``fn()`` unless round k's phase ``name`` is recorded as done; record it."""
        key = f"round_{k}/{name}"
        if key not in self.state["done"]:
            log.info("iterate: round %d, %s", k, name)
            self.state["done"][key] = fn() or {}
            self._write()
        return self.state["done"][key]

    # ------------------------------------------------------------------ pieces
    def round_dir(self, k: int) -> str:
        return os.path.join(self.workdir, f"round_{k}")

    def policy_source(self, k: int) -> str:
        return self.cfg.policy if k == 0 else os.path.join(self.round_dir(k - 1), "policy")

    def load_policy(self, source: str) -> Policy:
        s = self.cfg.samples
        return Policy(source, self.mesh, self.rules, max_new_tokens=s.max_new_tokens,
                      temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                      prompt_len=s.prompt_len)

    def reward(self):
        cfg = self.cfg.reward.copy_and_resolve_references()
        cfg.model_workdir = self.state["reward_model"]
        return rewards_lib.build(cfg, self.mesh, self.rules)

    def judge(self, policy_source: str):
        j = self.cfg.judge
        if not j.source:
            raise ConfigError("pairs.source=judge needs judge.source (a kyx / HF model, or "
                              "'policy' for self-rewarding)")
        source = policy_source if j.source == "policy" else j.source
        return load_pairwise_judge(source, j.prompt, j.first, j.second, self.mesh, self.rules,
                                   chat=j.chat)

    def prompts(self, split: str, k: int | None) -> list[dict]:
        everything = rejection.mined_prompts(self.cfg.data, split)
        if k is None:  # evaluation: a fixed held-out set
            return everything[:self.cfg.eval.prompts]
        order = np.random.default_rng(self.cfg.seed * 1000 + k).permutation(len(everything))
        return [everything[i] for i in order[:self.cfg.samples.prompts]]

    def stage_config(self, name: str, init_from: str, workdir: str, **records):
        """The trainer config ``name`` (a section of this config) for one round's stage."""
        cfg = copy.deepcopy(self.cfg[name])
        with cfg.unlocked():
            cfg.init_from = init_from
            cfg.train.seed = self.cfg.seed
            for key in ("name", "path", "data_dir", "text_feature"):
                cfg.data[key] = self.cfg.data[key]
            cfg.mesh = copy.deepcopy(self.cfg.mesh)
            for key, value in records.items():
                cfg.data.records[key] = value
            if name == "ppo":
                cfg.reward = self.cfg.reward.copy_and_resolve_references()
                cfg.reward.model_workdir = self.state["reward_model"]
        return cfg

    def train(self, name: str, init_from: str, workdir: str, **records) -> str:
        from kyx.train import loop, registry
        loop.run(registry.build(self.stage_config(name, init_from, workdir, **records)), workdir)
        return workdir

    # ------------------------------------------------------------------ a round
    def run_round(self, k: int) -> None:
        rd, cfg = self.round_dir(k), self.cfg
        os.makedirs(rd, exist_ok=True)
        src = self.policy_source(k)
        paths = {n: os.path.join(rd, f"{n}.jsonl") for n in ("samples", "pairs", "sft")}

        def sample():
            policy = self.load_policy(src)
            prompts = self.prompts("train", k)
            responses = policy.sample(prompts, cfg.samples.n, cfg.seed * 1000 + k,
                                      cfg.samples.batch_prompts)
            cands = rejection.score_candidates(prompts, responses, self.reward())
            rejection.write_jsonl(paths["samples"], cands)
            return {"prompts": len(cands),
                    "mean_score": float(np.mean([np.mean(c["scores"]) for c in cands]))}
        self.phase(k, "sample", sample)

        def data():
            with open(paths["samples"]) as f:
                cands = [json.loads(line) for line in f]
            pairs = PAIR_SOURCES.get(cfg.pairs.source).fn(self, cands, k)
            if not pairs and cfg.algorithm == "dpo":
                raise ConfigError(f"round {k} made no preference pairs: every prompt's "
                                  "samples scored alike; raise samples.n or change the reward")
            rejection.write_jsonl(paths["pairs"], pairs)
            out = {"pairs": len(pairs)}
            if cfg.sft_data:
                kept = rejection.keep_best(cands)
                rejection.write_jsonl(paths["sft"], kept)
                out["sft"] = len(kept)
            return out
        self.phase(k, "data", data)

        if cfg.retrain_rm:
            def rm():
                start = self.state["reward_model"] or cfg.policy
                out = self.train("rm", start, os.path.join(rd, "rm"), source="jsonl",
                                 path=paths["pairs"])
                self.state["reward_model"] = out
                return {"workdir": out}
            self.phase(k, "rm", rm)

        start = src
        if cfg.sft_data:
            start = self.phase(k, "sft", lambda: {"workdir": self.train(
                "sft", src, os.path.join(rd, "sft"), source="jsonl", path=paths["sft"])})[
                "workdir"]
        records = {"source": "jsonl", "path": paths["pairs"]} if cfg.algorithm == "dpo" else {}
        self.phase(k, "train", lambda: {"workdir": self.train(
            cfg.algorithm, start, os.path.join(rd, "policy"), **records)})
        self.phase(k, "eval", lambda: self.evaluate(k + 1))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, k: int) -> dict:
        cfg = self.cfg
        policy = self.load_policy(self.policy_source(k))
        base = policy if k == 0 else self.load_policy(self.policy_source(0))
        win_by = {name: self._term(name) for name, _ in
                  rewards_lib.parse_terms(cfg.eval.win_by)}
        judge = self.judge(self.policy_source(0)) if cfg.judge.source else None
        out = evaluate(policy, base, self.prompts("validation", None), seed=cfg.eval.seed,
                       reward=self.reward(), win_by=win_by, judge=judge,
                       sft_eval=self._sft_loss if cfg.eval.sft_loss else None)
        self.report()
        return out

    def _term(self, name: str):
        cfg = self.cfg.reward.copy_and_resolve_references()
        cfg.terms = name
        cfg.model_workdir = cfg.model_workdir or self.state["reward_model"]
        return rewards_lib.build(cfg, self.mesh, self.rules)

    def _sft_loss(self, source: str) -> float:
        from kyx.train import registry
        from kyx.train.evaluation import trainer_eval
        trainer = registry.build(self.stage_config("sft", source, ""))
        params = {"policy": trainer.models["policy"].init()}
        return trainer_eval(trainer, params, self.mesh, self.rules)[0].get("eval/loss",
                                                                            float("nan"))

    # ------------------------------------------------------------------ driver
    def run(self) -> list[dict]:
        try:
            self.phase(0, "eval_start", lambda: self.evaluate(0))
            for k in range(self.cfg.rounds):
                self.run_round(k)
            self.report()
            return self.results()
        finally:
            self.lock.release()

    def results(self) -> list[dict]:
        done = self.state["done"]
        rows = [{"round": 0, **done["round_0/eval_start"]}] if "round_0/eval_start" in done \
            else []
        for k in range(self.cfg.rounds):
            if f"round_{k}/eval" in done:
                rows.append({"round": k + 1, **done[f"round_{k}/eval"],
                             **{f"data/{n}": v for n, v in done[f"round_{k}/data"].items()}})
        return rows

    def report(self) -> None:
        rows = self.results()
        if not rows:
            return
        atomic_write(os.path.join(self.workdir, "results.json"), json.dumps(rows, indent=1))
        keys = [k for k in rows[-1] if k != "round"]
        lines = ["| round | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r in rows:
            lines.append(f"| {r['round']} | " + " | ".join(
                f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys)
                + " |")
        atomic_write(os.path.join(self.workdir, "results.md"), "\n".join(lines) + "\n")
        _plot(rows, os.path.join(self.workdir, "rounds.png"))


def _plot(rows: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    rounds = [r["round"] for r in rows]
    panels = [("reward", ["reward"]), ("win rate vs round 0",
                                       sorted({k for r in rows for k in r
                                               if k.startswith("win/")})),
              ("KL to round 0", ["kl"]), ("held-out SFT loss", ["sft_eval_loss"])]
    for i, (title, keys) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        for key in keys:
            if all(key in r for r in rows):
                ax.plot(rounds, [r[key] for r in rows], "o-", label=key)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
