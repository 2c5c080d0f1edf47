"""The sink registry: ``metrics.sinks`` names -> the module that makes that sink.

Each sink module defines ``make_sink(ctx: SinkContext) -> Sink`` and is imported only when
a run selects it (tensorboardX and wandb are slow imports; wandb is an optional extra).
A new sink is a module plus one ``register`` line below. ``enabled_by`` names a key of
the ``metrics`` config section whose non-empty value also selects the sink (so
``--config.metrics.wandb.project=P`` turns W&B on without listing it in ``sinks``).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from kyx.registry import Registry

SINKS = Registry("metrics.sinks", module="", enabled_by="")


def register(name: str, module: str, enabled_by: str = "") -> None:
    """Make ``name`` a valid ``metrics.sinks`` entry built by ``module.make_sink``."""
    if name in SINKS and SINKS.get(name).module == module:
        return
    SINKS.register(name, module=module, enabled_by=enabled_by)(
        lambda ctx: importlib.import_module(module).make_sink(ctx))


register("jsonl", "kyx.telemetry.jsonl")
register("tensorboard", "kyx.telemetry.tensorboard")
register("console", "kyx.telemetry.console")
register("wandb", "kyx.telemetry.wandb_sink", enabled_by="wandb.project")


def selected(settings: Mapping[str, Any]) -> list[str]:
    """The sinks a ``metrics`` config section asks for: its ``sinks`` plus every sink
    whose ``enabled_by`` key is set, in registry order."""
    listed = set(settings.get("sinks", ()))
    return [entry.name for entry in SINKS.entries()
            if entry.name in listed or (entry.enabled_by and _lookup(settings,
                                                                     entry.enabled_by))]


def _lookup(settings: Mapping[str, Any], dotted: str) -> Any:
    node: Any = settings
    for part in dotted.split("."):
        if not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node
