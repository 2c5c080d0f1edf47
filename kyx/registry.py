"""Named registries: extension by registration instead of if/elif chains in shared code.

A registry maps a name (what a config says, e.g. ``loss.name = "dpo"``) to an entry: a
function plus metadata the caller reads instead of checking names (``needs_reference``,
the record kind a loss consumes, its config defaults ...)::

    LOSSES = Registry("loss.name")

    @LOSSES.register("dpo", needs_reference=True, records="preference")
    def dpo_entry(cfg, pol, ref, batch): ...

    LOSSES.get(cfg.loss.name).needs_reference

Unknown names raise a ConfigError naming the close matches and every choice.
"""
from __future__ import annotations

import dataclasses
import difflib
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

from kyx.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered function and its metadata (read as attributes: ``entry.records``)."""
    name: str
    fn: Callable
    meta: Mapping[str, Any]

    def __getattr__(self, key: str) -> Any:
        meta = object.__getattribute__(self, "meta")
        if key in meta:
            return meta[key]
        raise AttributeError(f"{self.name!r} has no metadata {key!r}; it has {sorted(meta)}")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class Registry:
    """Ordered name -> Entry map; ``what`` names the config key in error messages."""

    def __init__(self, what: str, **required_meta: Any):
        self.what = what
        self._defaults = dict(required_meta)   # metadata every entry has (with defaults)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` under ``name``; returns ``fn`` unchanged."""
        unknown = set(meta) - set(self._defaults) if self._defaults else set()
        if unknown:
            raise TypeError(f"{self.what} {name!r}: unknown metadata {sorted(unknown)}; "
                            f"known: {sorted(self._defaults)}")

        def add(fn: Callable) -> Callable:
            if name in self._entries and self._entries[name].fn is not fn:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = Entry(name, fn, MappingProxyType({**self._defaults, **meta}))
            return fn
        return add

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"unknown {self.what} {name!r}; {hint}choose one of "
                              f"{', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
