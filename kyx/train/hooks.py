"""Periodic actions of the training loop: evaluate, log, checkpoint, plot, and yours.

The loop (kyx/train/loop.py) only runs steps; after each step it calls every hook that is
due. A hook is a function of the ``Run`` (state, step, writer, checkpoints ...) with an
interval, in the manner of Levanter's ``add_hook(fn, every=N)``::

    def print_norm(run):
        print(run.step, optax.global_norm(run.state.params("policy")))

    trainer.hooks.append(Hook("norm", print_norm, every=100))

The default hooks are built from the config by the factories in ``DEFAULT_HOOKS``; a new
periodic action for every run is a factory plus its ``@DEFAULT_HOOKS.register`` line, one
for a single trainer goes into its ``Trainer.hooks``. Hooks run in ``order`` (lower
first): anything that adds metrics to the current step must run before ``log``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from kyx import telemetry
from kyx.registry import Registry

Run = Any  # kyx.train.loop.Run (not imported: the loop imports this module)

EVAL, DEFAULT, LOG, CHECKPOINT, PLOT = 10, 50, 80, 90, 100  # standard orders


@dataclasses.dataclass(frozen=True)
class Hook:
    name: str
    fn: Callable[[Run], None]
    every: int = 0          # after every `every`-th step; 0: only at the end
    at_end: bool = True     # also after the last step of the run
    order: int = DEFAULT
    at_start: bool = False  # also before the first step of a fresh run (step 0)

    def due(self, step: int, total: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or (self.at_end and step == total)


# name -> factory(run) -> Hook | None (None: not applicable to this run)
DEFAULT_HOOKS = Registry("hook")


def eval_hook(evaluate: Callable[[Run], dict], every: int, name: str = "eval",
              at_start: bool = False) -> Hook:
    """A hook writing ``evaluate(run)``'s metrics in the current step's row as they happen
    (the throughput window closes before, and evaluation time is not counted in it);
    ``at_start`` also evaluates the initial params (a row at step 0)."""
    def run_eval(run: Run) -> None:
        run.collect()
        with run.untimed():
            run.add_metrics(run.step, evaluate(run))
        run.flush()
    return Hook(name, run_eval, every=every, order=EVAL, at_start=at_start)


@DEFAULT_HOOKS.register("eval")
def default_eval_hook(run: Run) -> Hook | None:
    """The trainer's eval_fn over its eval batches (``Run.evaluate``)."""
    if run.eval_fn is None:
        return None
    return eval_hook(lambda r: r.evaluate(), run.cfg.train.eval_every,
                     at_start=run.cfg.train.get("eval_at_start", False))


@DEFAULT_HOOKS.register("log")
def log_hook(run: Run) -> Hook:
    """Rows to the host and to the metrics sinks (console lines / bar included)."""
    return Hook("log", lambda r: r.flush(), every=run.cfg.train.log_every, order=LOG)


@DEFAULT_HOOKS.register("checkpoint")
def checkpoint_hook(run: Run) -> Hook:
    return Hook("checkpoint", lambda r: r.save(), every=run.cfg.checkpoint.every,
                order=CHECKPOINT)


@DEFAULT_HOOKS.register("plot")
def plot_hook(run: Run) -> Hook | None:
    """The loss-curve PNG from metrics.jsonl at the end, by the process that writes it
    (none when the ``jsonl`` sink is off)."""
    if not telemetry.writes_here():
        return None
    return Hook("plot", _plot, every=0, order=PLOT)


def _plot(run: Run) -> None:
    if "jsonl" in telemetry.selected(run.cfg.metrics):
        telemetry.plot_loss_curve(run.workdir)


def build_hooks(run: Run, extra=()) -> list[Hook]:
    """The registered default hooks for this run plus ``extra``, sorted by ``order``."""
    hooks = [h for h in (factory(run) for factory in
                         (e.fn for e in DEFAULT_HOOKS.entries())) if h is not None]
    return sorted([*hooks, *extra], key=lambda h: h.order)
