"""A trainer config is validated before anything runs: one table of per-field checks.

``validate(cfg)`` runs every check whose key the config has, then the rules between
fields, and raises one ConfigError listing every problem with its key, its value and the
valid range or values. `kyx train` calls it right after the config is resolved, before
the mesh, the data and the model; Python users call it before ``registry.build(cfg)``.
A new config field is one line, a component's own cross-field check another::

    field("train.my_every", every())
    field("loss.name", one_of(LM_LOSSES.names), trainers=("pretrain",))
    component("model", lambda cfg: ModelConfig.from_config(cfg.model))

Intervals (``*_every``) are whole numbers >= 0 where 0 runs the action only after the
last step; learning rates are >= 0 (0 keeps the params fixed).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Iterable

from kyx import rewards, sharding
from kyx.checkpoint import excp_quant, excp_store
from kyx.data import templates
from kyx.data import mixture
from kyx.data.pipeline import TOKENIZER_KINDS, TRAIN_SAMPLERS
from kyx.data.pretokenize import WHITESPACE
from kyx.errors import ConfigError
from kyx.model import config as model_config
from kyx.objectives import late_interaction, lm, preference, rl
from kyx.scaling import FAMILIES
from kyx.scaling.curves import KINDS as SCALING_KINDS
from kyx.telemetry import SINKS, parse_steps, selected
from kyx.train import optim, precision
from kyx.train.checks import (Check, boolean, each, every, integer, number, one_of,
                              parsed_by)
from kyx.train.trainers import TRAINERS

NAN_POLICIES = ("skip", "stop")          # read by kyx/train/loop.py
RECORD_SOURCES = ("mined", "jsonl")      # kyx/data/preference_corpus.py
CORPORA = ("stdlib", "text_files")       # kyx/data/corpus.py, plus 'tfds:<dataset>'
WANDB_MODES = ("online", "offline", "disabled")  # or "": $WANDB_MODE, else online


@dataclasses.dataclass(frozen=True)
class Field:
    path: str                            # dotted key, e.g. "optim.lr"
    check: Check
    trainers: tuple[str, ...] | None     # None: whatever config.trainer is


FIELDS: list[Field] = []
# fn(cfg) -> [(key, value, what is wrong)], run after the field checks; value NO_VALUE:
# the problem concerns several fields and names them itself
RULES: list[tuple[Callable, tuple[str, ...] | None]] = []
NO_VALUE = object()


def field(path: str, check: Check, trainers: Iterable[str] | None = None) -> None:
    """Check ``path`` (when the config has it; for ``trainers`` only, if given)."""
    FIELDS.append(Field(path, check, tuple(trainers) if trainers else None))


def rule(trainers: Iterable[str] | None = None):
    """Decorator: ``fn(cfg) -> iterable of (key, value, problem)`` between fields."""
    def add(fn):
        RULES.append((fn, tuple(trainers) if trainers else None))
        return fn
    return add


def component(section: str, check: Callable, trainers: Iterable[str] | None = None) -> None:
    """A component's own validation of its section (``check(cfg)`` raising ConfigError),
    run once the section's field checks passed."""
    def run(cfg):
        if _section_ok(cfg, section):
            try:
                check(cfg)
            except ConfigError as e:
                yield section, NO_VALUE, str(e)
    rule(trainers)(run)


def validate(cfg, prefix: str = "") -> None:
    """Raise one ConfigError listing every problem of ``cfg``; ``prefix`` names the
    section when ``cfg`` is part of a larger config (e.g. "dpo." in configs/iterate.py)."""
    found = problems(cfg)
    if found:
        lines = [f"  {prefix}{key}{'' if value is NO_VALUE else f' = {value!r}'}: {what}"
                 for key, value, what in found]
        n = len(found)
        raise ConfigError(f"invalid config ({n} problem{'s' * (n != 1)}):\n" + "\n".join(lines))


def problems(cfg) -> list[tuple[str, Any, str]]:
    """(key, value, what is wrong) for every field check and rule that fails."""
    trainer = cfg.get("trainer")
    applies = lambda only: only is None or trainer in only  # noqa: E731
    found = []
    for f in FIELDS:
        if applies(f.trainers) and _has(cfg, f.path):
            value = _get(cfg, f.path)
            what = f.check(value)
            if what:
                found.append((f.path, value, what))
    bad = {key for key, _, _ in found}
    for fn, only in RULES:
        if applies(only):
            found += [p for p in fn(cfg) if p[0] not in bad]
    return found


def _has(cfg, path: str) -> bool:
    node = cfg
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def _get(cfg, path: str) -> Any:
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def _section_ok(cfg, section: str) -> bool:
    """No field check failed under ``section`` (so a component's own check can run)."""
    return _has(cfg, section) and not any(
        f.path.startswith(section + ".") and _has(cfg, f.path) and f.check(_get(cfg, f.path))
        for f in FIELDS)


def _trainer_module(name: str):
    """A trainer module (for its constants), imported only to check that trainer's config."""
    return TRAINERS.get(name).fn()


def _mesh_axis(value) -> str | None:
    if value == -1 or integer(lo=1)(value) is None:
        return None
    return "must be -1 (the devices left over) or a whole number >= 1"


def _corpus(value) -> str | None:
    if value in CORPORA or (isinstance(value, str) and value.startswith("tfds:") and value[5:]):
        return None
    return f"must be one of {', '.join(CORPORA)} or 'tfds:<dataset>[/config][:version]'"


# ----------------------------------------------------------------------------- the table
field("trainer", one_of(TRAINERS.names))
field("train.steps", integer(lo=1))
field("train.seed", integer())
field("train.log_every", every())
field("train.eval_every", every())
field("train.eval_at_start", boolean())
field("train.nan_policy", one_of(NAN_POLICIES))
field("train.max_skipped_fraction", number(lo=0, hi=1))
field("train.measure_mfu", boolean())
field("train.profile_steps", parsed_by(parse_steps))

field("metrics.sinks", each(one_of(SINKS.names)))
field("metrics.wandb.mode", lambda v: None if v == "" else one_of(WANDB_MODES)(v))
_text = lambda v: None if isinstance(v, str) else "must be text"  # noqa: E731
for _key in ("project", "entity", "name"):
    field(f"metrics.wandb.{_key}", _text)
field("metrics.wandb.tags", each(_text))

for _opt in ("optim", "value_optim"):
    field(f"{_opt}.lr", number(lo=0))
    field(f"{_opt}.min_lr_ratio", number(lo=0, hi=1))
    field(f"{_opt}.warmup_steps", integer(lo=0))
    field(f"{_opt}.schedule", one_of(optim.SCHEDULES))
    field(f"{_opt}.b1", number(lo=0, below=1))
    field(f"{_opt}.b2", number(lo=0, below=1))
    field(f"{_opt}.eps", number(above=0))
    field(f"{_opt}.weight_decay", number(lo=0))
    field(f"{_opt}.clip_norm", number(lo=0))
    field(f"{_opt}.grad_accum", integer(lo=1))
    field(f"{_opt}.state_dtype", one_of(precision.STATE_DTYPES))

for _axis in sharding.MESH_AXES:
    field(f"mesh.{_axis}", _mesh_axis)
field("mesh.rules", one_of(lambda: sharding.RULE_PRESETS))

field("checkpoint.every", every())
field("checkpoint.keep", integer(lo=1))
field("checkpoint.async_save", boolean())
field("checkpoint.resume_step", integer(lo=-1, note="-1: the newest good checkpoint"))
field("checkpoint.excp.enabled", boolean())
field("checkpoint.excp.alpha", number(lo=0))
field("checkpoint.excp.beta", number(lo=0))
field("checkpoint.excp.bits", one_of(excp_quant.BITS))
field("checkpoint.excp.coder", one_of(excp_store.CODERS))
field("checkpoint.excp.keep_full", integer(lo=1))

field("data.name", _corpus)
field("data.seq_len", integer(lo=2))
field("data.batch_size", integer(lo=1))
field("data.seed", integer())
field("data.sampling", one_of(TRAIN_SAMPLERS.names))
field("data.cache_workers", integer(lo=0, note="0: in-process"))
field("data.dedup.exact", boolean())
field("data.dedup.near", boolean())
field("data.dedup.threshold", number(lo=0, hi=1))
field("data.dedup.num_perm", integer(lo=16))
field("data.dedup.shingle", integer(lo=1))
field("data.eval_batches", integer(lo=0, note="0: one full pass"))
field("data.num_epochs", integer(lo=0, note="0: repeat forever"))
field("data.val_fraction", number(lo=0, below=1))
for _key in ("min_val_files", "max_files", "worker_count"):
    field(f"data.{_key}", integer(lo=0))
field("data.read_threads", integer(lo=1))
field("data.prefetch", integer(lo=1))
field("data.tokenizer.kind", one_of(TOKENIZER_KINDS.names))
field("data.tokenizer.vocab_size", integer(lo=1))
field("data.tokenizer.split_digits", boolean())
field("data.tokenizer.whitespace", one_of(WHITESPACE))
field("data.tokenizer.sample_bytes", integer(lo=1))
field("scaling.predict_from", number(lo=0, hi=1))  # 0: no live forecast
field("scaling.kind", one_of(tuple(SCALING_KINDS)))
for _key in ("a0", "a1", "a2"):
    field(f"scaling.{_key}", one_of(FAMILIES.names))
field("data.records.source", one_of(RECORD_SOURCES))
field("data.records.chat_template",
      one_of(lambda: templates.CHOICES + templates.TEMPLATES.names()))
field("data.records.val_fraction", number(lo=0, below=1))
for _key in ("max_train", "max_eval", "max_prompt_chars", "max_response_lines",
             "max_response_chars", "max_negatives"):
    field(f"data.records.{_key}", integer(lo=0))

for _key in ("vocab_size", "d_model", "num_layers", "num_heads", "ffn_multiple", "max_seq_len"):
    field(f"model.{_key}", integer(lo=1))
for _key in ("num_kv_heads", "head_dim", "ffn_dim", "moe_num_experts", "moe_ffn_dim",
             "moe_shared_experts", "moe_first_dense"):
    field(f"model.{_key}", integer(lo=0))
field("model.dtype", one_of(model_config.DTYPES))
field("model.param_dtype", one_of(model_config.DTYPES))
field("model.remat", one_of(model_config.REMAT_POLICIES))
field("model.moe_dispatch", one_of(model_config.MOE_DISPATCH))
field("model.moe_router_input", one_of(model_config.MOE_ROUTER_INPUTS))
field("model.norm_eps", number(above=0))
field("model.init_std", number(lo=0))
field("model.rope_theta", number(above=0))
for _key in ("moe_aux_loss_weight", "moe_z_loss_weight", "moe_route_error_weight"):
    field(f"model.{_key}", number(lo=0))

field("loss.name", one_of(lm.LM_LOSSES.names), trainers=("pretrain",))
for _key in ("mile_gamma", "max_z_weight", "z_loss_weight"):
    field(f"loss.{_key}", number(lo=0), trainers=("pretrain",))
field("loss.negative_feedback", boolean(), trainers=("sft",))
field("loss.neg_weight", number(lo=0), trainers=("sft",))
field("loss.margin", one_of(preference.LLAMA2_MARGINS), trainers=("rm",))
field("loss.name", one_of(preference.PREFERENCE_LOSSES.names), trainers=("dpo",))
field("loss.beta", number(above=0), trainers=("dpo",))
field("loss.simpo_beta", number(above=0), trainers=("dpo",))
field("loss.label_smoothing", number(lo=0, below=0.5), trainers=("dpo",))
for _key in ("nll_coef", "orpo_lambda", "simpo_gamma_ratio", "kto_desirable_weight",
             "kto_undesirable_weight"):
    field(f"loss.{_key}", number(lo=0), trainers=("dpo",))
field("reference", one_of(lambda: _trainer_module("dpo").REFERENCES), trainers=("dpo",))

field("colbert.scoring", one_of(late_interaction.SCORINGS.names), trainers=("colbert",))
field("colbert.dim", integer(lo=1), trainers=("colbert",))
field("colbert.query_len", integer(lo=3), trainers=("colbert",))
field("colbert.scale", number(lo=0), trainers=("colbert",))
field("colbert.mask_punctuation", boolean(), trainers=("colbert",))
field("data.records.source", one_of(("mined",)), trainers=("colbert",))

field("rl.algorithm", one_of(lambda: _trainer_module("ppo").ALGORITHMS.names()))
field("rl.kl_estimator", one_of(rl.KL_ESTIMATORS.names))
field("rl.value", one_of(lambda: _trainer_module("ppo").VALUES))
field("rl.value_init", one_of(lambda: _trainer_module("ppo").VALUE_INITS))
for _key in ("group_size", "max_new_tokens", "epochs", "minibatches"):
    field(f"rl.{_key}", integer(lo=1))
for _key in ("top_k", "critic_warmup_steps"):
    field(f"rl.{_key}", integer(lo=0))
field("rl.top_p", number(above=0, hi=1))
field("rl.gamma", number(lo=0, hi=1))
field("rl.lam", number(lo=0, hi=1))
field("rl.clip_eps", number(above=0))
field("rl.kl_horizon", number(above=0))
for _key in ("temperature", "kl_coef", "kl_target", "value_clip", "entropy_coef",
             "reward_clip", "value_coef"):
    field(f"rl.{_key}", number(lo=0))
field("reward.terms", parsed_by(rewards.parse_terms))
for _key in ("max_chars", "batch_size", "max_len"):
    field(f"reward.{_key}", integer(lo=1))


field("sae.kind", one_of(lambda: _trainer_module("sae").KINDS.names()),
      trainers=("sae",))
for _key in ("n_latents", "k", "k_aux", "dead_tokens", "init_sample"):
    field(f"sae.{_key}", integer(lo=1), trainers=("sae",))
for _key in ("l1", "aux_coef"):
    field(f"sae.{_key}", number(lo=0), trainers=("sae",))
field("sae.step", integer(lo=-1, note="-1: the newest checkpoint"), trainers=("sae",))
for _key in ("tokens", "batch_size", "seq_len"):
    field(f"sae.harvest.{_key}", integer(lo=1), trainers=("sae",))
field("sae.harvest.val_fraction", number(lo=0, below=1), trainers=("sae",))
field("sae.lm_eval.batches", integer(lo=0, note="0: no LM-side metrics"), trainers=("sae",))


# ----------------------------------------------------------------------------- rules
component("model", lambda cfg: model_config.ModelConfig.from_config(cfg.model))
component("rl", lambda cfg: _trainer_module("ppo").algorithm(cfg), trainers=("ppo",))
component("sae", lambda cfg: _trainer_module("sae").check(cfg), trainers=("sae",))


@rule()
def _sequence_fits_the_model(cfg):
    """Rows of data.seq_len tokens (RL: prompt plus response) fit model.max_seq_len."""
    if not (_has(cfg, "data.seq_len") and _has(cfg, "model.max_seq_len")):
        return
    seq, limit = cfg.data.seq_len, cfg.model.max_seq_len
    why = (f"must be <= model.max_seq_len = {limit}, the longest sequence the model is "
           "built for; lower it or raise model.max_seq_len")
    if seq > limit:
        yield "data.seq_len", seq, why
    elif _has(cfg, "rl.max_new_tokens") and seq + cfg.rl.max_new_tokens > limit:
        yield ("rl.max_new_tokens", cfg.rl.max_new_tokens,
               f"data.seq_len + rl.max_new_tokens = {seq + cfg.rl.max_new_tokens} {why}")
    if _has(cfg, "colbert.query_len") and cfg.colbert.query_len > limit:
        yield "colbert.query_len", cfg.colbert.query_len, why


@rule()
def _mixture_sources(cfg):
    """Every data.mixture source has a positive weight and only per-source keys."""
    if not (_has(cfg, "data.mixture") and cfg.data.mixture):
        return
    try:
        sources = mixture.source_configs(cfg.data)
    except ConfigError as e:
        yield "data.mixture", NO_VALUE, str(e)
        return
    if len(sources) < 2:
        yield "data.mixture", sorted(sources), "needs at least two sources (one corpus: data.name)"
    if cfg.data.get("sampling", "iid") == "packed":
        yield "data.sampling", cfg.data.sampling, "must be 'iid' or 'stratified' with a data.mixture"


@rule()
def _moments_not_float16(cfg):
    """optim.state_dtype "" stores Adam's moments like the params: not in float16."""
    if not (_has(cfg, "model.param_dtype") and cfg.model.param_dtype == "float16"):
        return
    for opt in ("optim", "value_optim"):
        if _has(cfg, f"{opt}.state_dtype") and cfg[opt].state_dtype == "":
            yield (f"{opt}.state_dtype", "", "'' would store Adam's moments in float16 "
                   "(model.param_dtype), where the second moment underflows; set it to "
                   "float32 or bfloat16")


@rule()
def _one_inferred_mesh_axis(cfg):
    inferred = [a for a in sharding.MESH_AXES if _has(cfg, f"mesh.{a}") and cfg.mesh[a] == -1]
    if len(inferred) > 1:
        yield "mesh", NO_VALUE, f"at most one mesh axis may be -1, got -1 for {inferred}"


@rule()
def _micro_batches_split_the_batch(cfg):
    """(RL splits its rollouts by rl.minibatches instead, checked with the algorithm.)"""
    if "rl" in cfg or not (_has(cfg, "optim.grad_accum") and _has(cfg, "data.batch_size")):
        return
    n, b = cfg.optim.grad_accum, cfg.data.batch_size
    if b % n:
        yield "optim.grad_accum", n, f"must divide data.batch_size = {b} (micro-batches)"


@rule()
def _inputs_are_named(cfg):
    if _has(cfg, "data.name") and cfg.data.name == "text_files" and not cfg.data.path:
        yield "data.path", "", "data.name=text_files needs a directory, a file or a glob"
    if (_has(cfg, "data.records.source") and cfg.data.records.source == "jsonl"
            and not cfg.data.records.path):
        yield "data.records.path", "", "data.records.source=jsonl needs a .jsonl file or a glob"


@rule()
def _tokenizer_fits_the_model(cfg):
    """A tokenizer trained here has data.tokenizer.vocab_size ids (with init_from or a
    tokenizer file, the tokenizer's real size is checked once it is loaded)."""
    if not (_has(cfg, "data.tokenizer.vocab_size") and _has(cfg, "model.vocab_size")):
        return
    if cfg.get("init_from") or cfg.data.tokenizer.model_path:
        return
    want, have = cfg.data.tokenizer.vocab_size, cfg.model.vocab_size
    if want > have:
        yield ("data.tokenizer.vocab_size", want,
               f"must be <= model.vocab_size = {have} (token ids index the embedding)")


@rule()
def _profiled_steps_run(cfg):
    """train.profile_steps names steps the run takes (START < END <= train.steps)."""
    if not (_has(cfg, "train.profile_steps") and _has(cfg, "train.steps")):
        return
    try:
        steps = parse_steps(cfg.train.profile_steps)
    except ConfigError:  # reported by its field check
        return
    if steps and steps[1] > cfg.train.steps:
        yield ("train.profile_steps", cfg.train.profile_steps,
               f"END must be <= train.steps = {cfg.train.steps} (the steps START .. END-1 "
               "are traced)")


@rule()
def _sink_packages_installed(cfg):
    """A selected sink whose package is an optional extra (W&B) is installed."""
    if _has(cfg, "metrics.sinks") and "wandb" in selected(cfg.metrics) \
            and importlib.util.find_spec("wandb") is None:
        yield ("metrics.wandb", NO_VALUE, "W&B is selected (metrics.wandb.project or "
               "metrics.sinks) but the wandb package is not installed: pip install "
               "'kyx[wandb]'")
