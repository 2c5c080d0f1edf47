"""Experiment configs: load `configs/<name>.py[:preset]`, apply CLI overrides, save as JSON.

A config file defines `get_config(arg: str | None = None) -> ConfigDict`; `arg` picks a
preset ('tiny', 'small', ...). Overrides (`--config.a.b=value` or `a.b=value`) are parsed
by the type of the field they replace, so typos and bad values fail before training.

The repository's configs/ ships inside the package as ``kyx.configs``, so a spec such as
`pretrain.py:tiny` or `configs/pretrain.py:tiny` names the shipped file whenever there is
no such file in the working directory (e.g. after `pip install git+...`).
"""
from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import ml_collections
from etils import epath
from ml_collections import config_dict

from kyx.errors import ConfigError, IntegrityError
from kyx.fileio import as_path, atomic_write, read_checked
from kyx.logs import get_logger

log = get_logger(__name__)

SHIPPED_PACKAGE = "kyx.configs"  # setup.py: package_dir {"kyx.configs": "configs"}
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


# ----------------------------------------------------------------------------- loading
def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Build the config named by `spec` ('path.py' or 'path.py:preset') and apply overrides."""
    path, arg = split_spec(spec)
    module = _import_file(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} has no get_config(arg) function")
    takes_arg = bool(inspect.signature(get_config).parameters)
    if arg is not None and not takes_arg:
        raise ConfigError(f"config file {path} has no presets (get_config takes no argument); "
                          f"drop ':{arg}' from the spec")
    try:
        cfg = get_config(arg) if takes_arg else get_config()
    except (ConfigError, ValueError, KeyError) as e:
        what = "no preset" if arg is None else f"preset {arg!r}"
        presets = getattr(module, "PRESETS", None)
        hint = (f"; available presets: {', '.join(map(str, presets))}"
                if presets and "choose one of" not in str(e) else "")
        raise ConfigError(f"config file {path}: get_config failed for {what}: {e}{hint}") from e
    if isinstance(cfg, config_dict.FrozenConfigDict):
        cfg = cfg.as_configdict()
    elif isinstance(cfg, dict):
        cfg = ml_collections.ConfigDict(cfg)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path}: get_config returned {type(cfg).__name__}, "
                          "expected an ml_collections.ConfigDict")
    apply_overrides(cfg, overrides)
    return cfg


def from_preset(cfg: ml_collections.ConfigDict, presets: dict, arg: str | None,
                default: str = "tiny") -> ml_collections.ConfigDict:
    """`cfg` updated in place with the nested dict ``presets[arg or default]``.

    The config files' ``get_config(arg)``; an unknown preset or key raises ConfigError
    with the choices (close matches first).
    """
    name = arg or default
    if name not in presets:
        close = difflib.get_close_matches(name, list(presets), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; choose one of {sorted(presets)}")
    _merge_dict(cfg, copy.deepcopy(presets[name]), "")
    return cfg


def _merge_dict(cfg: ml_collections.ConfigDict, updates: dict, prefix: str) -> None:
    for key, value in updates.items():
        if key not in cfg:
            raise ConfigError(f"preset sets unknown key {prefix + key!r}")
        if isinstance(value, dict):
            _merge_dict(cfg[key], value, f"{prefix}{key}.")
        else:
            cfg[key] = value


def split_spec(spec: str) -> tuple[Path, str | None]:
    """'configs/lm.py:tiny' -> (Path('configs/lm.py'), 'tiny'); no ':' -> preset None."""
    if not spec:
        raise ConfigError("empty config spec; expected path/to/config.py[:preset]")
    path, sep, arg = spec.rpartition(":")
    # Only split on a colon that follows '.py' (keeps Windows drive letters intact).
    if not sep or not path.endswith(".py"):
        path, arg = spec, None
    return Path(path), (arg or None)


class ConfigFile(NamedTuple):
    """A config file shipped with kyx: its path, preset names and first docstring line."""

    path: Path
    presets: list[str]
    summary: str


def shipped_dir() -> Path | None:
    """The folder of the config files shipped with kyx: the installed ``kyx.configs``
    package, else configs/ beside the kyx package (a source checkout on sys.path)."""
    try:
        spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    checkout = Path(__file__).resolve().parent.parent / "configs"
    return checkout if (checkout / "__init__.py").is_file() else None


def shipped_configs() -> list[ConfigFile]:
    """The shipped config files, sorted by name, read without running them."""
    folder = shipped_dir()
    if folder is None:
        return []
    return [describe_file(p) for p in sorted(folder.glob("*.py")) if p.name != "__init__.py"]


def describe_file(path: Path) -> ConfigFile:
    """A config file's presets (the string keys of its top-level ``PRESETS`` dict literal)
    and the first line of its docstring, from its syntax tree: nothing is imported."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    presets: list[str] = []
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AnnAssign) else [])
        if (any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in targets)
                and isinstance(node.value, ast.Dict)):
            presets = [k.value for k in node.value.keys
                       if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    doc = (ast.get_docstring(tree) or "").strip()
    return ConfigFile(path, presets, doc.splitlines()[0] if doc else "")


def shipped_configs_text() -> str:
    """One line per shipped config file: `name.py [presets]: summary`."""
    lines = [f"  {c.path.name} [{', '.join(c.presets) or 'no presets'}]: {c.summary}"
             for c in shipped_configs()]
    return "\n".join(lines) if lines else "  (none found: is kyx installed?)"


def find_file(path: Path) -> Path:
    """``path`` when that file exists; else, for a bare name or ``configs/<name>``, the
    config of that name shipped with kyx; else a ConfigError listing the shipped ones."""
    if path.is_file():
        return path
    folder = shipped_dir()
    if (folder is not None and not path.is_absolute()
            and path.parent in (Path("."), Path("configs"))
            and (folder / path.name).is_file()):
        return folder / path.name
    raise ConfigError(f"config file {path} does not exist (cwd: {os.getcwd()}). The configs "
                      "shipped with kyx (use e.g. --config pretrain.py:tiny), with their "
                      f"presets:\n{shipped_configs_text()}")


def _import_file(path: Path):
    """Import a Python file by path (``find_file``); its directory is on sys.path while it
    runs."""
    path = find_file(path)
    name = f"_kyx_config_{path.stem}_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {path} cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except (SyntaxError, ImportError) as e:
        raise ConfigError(f"config file {path} failed to import: {e}") from e
    finally:
        sys.path.remove(folder)
    return module


# ----------------------------------------------------------------------------- overrides
def parse_cli(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Split argv into (config spec, ['a.b=v', ...] overrides, remaining args).

    Accepts `--config PATH[:ARG]`, `--config=PATH[:ARG]`, `--config.a.b=v` and
    `--config.a.b v`. The spec is None when no `--config` is given.
    """
    spec, overrides, rest = None, [], []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--config" or item.startswith("--config="):
            if item == "--config":
                if i + 1 >= len(items):
                    raise ConfigError("--config needs a value: --config path/to/config.py[:preset]")
                i += 1
                spec = items[i]
            else:
                spec = item.split("=", 1)[1]
        elif item.startswith("--config."):
            if "=" not in item:
                if i + 1 >= len(items) or items[i + 1].startswith("--"):
                    raise ConfigError(f"{item} needs a value: {item}=VALUE or {item} VALUE")
                i += 1
                item = f"{item}={items[i]}"
            overrides.append(_strip_prefix(item))
        else:
            rest.append(item)
        i += 1
    return spec, overrides, rest


def _strip_prefix(item: str) -> str:
    return item[len("--config."):] if item.startswith("--config.") else item


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Set each 'a.b=value' / '--config.a.b=value' in place, parsed by the field's type.

    A '--config.a.b' item without '=' takes the next item as its value.
    """
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--config.") and "=" not in item and i + 1 < len(items):
            i += 1
            item = f"{item}={items[i]}"
        i += 1
        key, sep, raw = _strip_prefix(item).partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(f"bad config override {item!r}; expected a.b=VALUE "
                              "or --config.a.b=VALUE")
        parent, leaf = _resolve(cfg, key)
        old = parent[leaf]
        if isinstance(old, ml_collections.ConfigDict):
            parent[leaf] = _group_value(key, raw, old)
            continue
        parent[leaf] = parse_value(key, raw, old, parent.get_type(leaf))


def _group_value(key: str, raw: str, old: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A whole group given as a dict literal (e.g. ``data.mixture={"a": {...}, ...}``)."""
    value = _literal(raw)
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r} is a group; override one of its fields, "
                          f"e.g. {key}.{next(iter(old.keys()), 'x')}=VALUE, or give the whole "
                          "group as a dict literal, e.g. " + key + "='{\"x\": 1}'")
    return ml_collections.ConfigDict(value)


def _resolve(cfg: ml_collections.ConfigDict, key: str):
    """Return (parent ConfigDict, leaf name) for dotted `key`, or raise with suggestions."""
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(_unknown_key_message(cfg, key))
        if last:
            return node, part
        node = node[part]
    raise AssertionError("unreachable")


def _unknown_key_message(cfg: ml_collections.ConfigDict, key: str) -> str:
    paths = list(_dotted_paths(cfg))
    close = difflib.get_close_matches(key, paths, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean: {', '.join(close)}?"
    else:
        hint = f"top-level keys are: {', '.join(sorted(cfg.keys()))}"
    return f"unknown config key {key!r}; {hint}"


def _dotted_paths(cfg: ml_collections.ConfigDict, prefix: str = ""):
    for name in cfg.keys():
        path = prefix + name
        yield path
        value = cfg[name]
        if isinstance(value, ml_collections.ConfigDict):
            yield from _dotted_paths(value, path + ".")


def parse_value(key: str, raw: str, old: Any, field_type: type | None = None) -> Any:
    """Parse CLI text `raw` to the type of the current value `old` (or `field_type`)."""
    kind = field_type if field_type is not None else type(old)
    try:
        if kind in (tuple, list):
            return _parse_sequence(raw, old, kind)
        if kind is type(None):
            return _literal(raw)
        return _parse_scalar(raw, kind)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad value for config key {key!r}: {raw!r} is not a valid "
                          f"{kind.__name__} ({e})") from None


def _parse_scalar(raw: str, kind: type) -> Any:
    text = raw.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("use true/false, 1/0 or yes/no")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            as_float = float(text)  # accept '1e6' when it is a whole number
        except ValueError:
            raise ValueError("expected an integer such as 4 or 1e6") from None
        if not as_float.is_integer():
            raise ValueError("expected a whole number")
        return int(as_float)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number such as 0.1 or 3e-4") from None
    if kind is str:
        return raw
    raise TypeError(f"fields of type {kind.__name__} cannot be set from the command line")


def _literal(raw: str) -> Any:
    """Python literal if `raw` is one ('3', '(1, 2)', 'None'), else the string itself."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return raw


def _parse_sequence(raw: str, old: Any, kind: type) -> Any:
    text = raw.strip()
    if text in ("", "()", "[]"):
        return kind()
    value = _literal(text)
    if isinstance(value, (tuple, list)):
        items = list(value)
    elif isinstance(value, str) and value == text:  # not a literal: plain comma list
        items = [part.strip() for part in text.split(",") if part.strip()]
    else:
        items = [value]
    elem_types = {type(x) for x in (old or ())}
    if len(elem_types) == 1 and (elem := elem_types.pop()) in (bool, int, float, str):
        items = [x if isinstance(x, elem) and not (elem is int and isinstance(x, bool))
                 else _parse_scalar(str(x), elem) for x in items]
    return kind(items)


# ----------------------------------------------------------------------------- saving
def to_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Resolved config as plain JSON-ready data (tuples become lists)."""
    return _jsonable(cfg.to_dict(), "")


def _jsonable(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, key) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return value.item()
    raise ConfigError(f"config value {key!r} of type {type(value).__name__} cannot be saved "
                      "as JSON; use str/int/float/bool/None or tuples of them")


def dump(cfg: ml_collections.ConfigDict, path: str | os.PathLike) -> epath.Path:
    """Write the config as JSON (sorted keys, indent 2) atomically to a local path or a
    storage URL (kyx/fileio.py); returns the path."""
    path = as_path(path)
    text = json.dumps(to_dict(cfg), sort_keys=True, indent=2) + "\n"
    atomic_write(path, text, checksum=True)  # load_json verifies it
    return path


def load_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Read a config written by `dump`. JSON arrays come back as tuples (the ml_collections
    convention), so `to_dict(load_json(p)) == to_dict(cfg)` for any dumped `cfg`.

    A damaged (e.g. truncated) workdir ``config.json`` falls back, with a warning, to the
    copy of the resolved config stored with the newest readable checkpoint."""
    path = as_path(path)
    try:
        data = json.loads(read_checked(path).decode("utf-8"))
        problem = None if isinstance(data, dict) else (
            f"must hold an object, got {type(data).__name__}")
    except FileNotFoundError:
        raise ConfigError(f"config JSON {path} does not exist") from None
    except IntegrityError as e:  # valid JSON, maybe, but not the bytes that were written
        problem = f"is damaged ({e})"
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError: truncated or damaged
        problem = f"is not valid JSON (truncated or damaged?): {e}"
    if problem:
        data = _stored_config(path, problem)
    return ml_collections.ConfigDict(_tuplify(data))


STORED_CONFIG = "checkpoints/<step>/config/metadata"


def _stored_config(path: epath.Path, problem: str) -> dict:
    """The resolved config every checkpoint of a workdir stores next to its state, from
    the newest step whose copy reads; else a ConfigError saying where copies live."""
    message = f"config JSON {path} {problem}"
    if path.name != "config.json":
        raise ConfigError(message)
    root = path.parent / "checkpoints"
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()),
                   reverse=True) if root.is_dir() else []
    for step in steps:
        stored = root / str(step) / "config" / "metadata"
        try:
            data = json.loads(stored.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            log.warning("%s; using the resolved config stored with checkpoint %d (%s) "
                        "instead (the next `kyx train` on this workdir rewrites config.json)",
                        message, step, stored)
            return data
    found = (f"none of steps {steps} under {root} has a readable copy" if steps else
             f"there is no checkpoint under {root}")
    raise ConfigError(
        f"{message}. It holds the workdir's resolved config, of which each checkpoint stores "
        f"a copy in {STORED_CONFIG}; {found}. Restore config.json (a checkpoint's copy is the "
        "same JSON) or rerun `kyx train` on this workdir with the run's --config")


def _tuplify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def lock(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locked deep copy: adding a new key (e.g. a typo `cfg.lerning_rate = ...`) raises."""
    locked = copy.deepcopy(cfg)
    locked.lock()
    return locked


__all__ = ["load", "split_spec", "find_file", "shipped_configs", "parse_cli",
           "apply_overrides", "parse_value", "to_dict", "dump", "load_json", "lock"]
