"""JAX's persistent compilation cache: compiled programs kept on disk across processes.

Most of a short `kyx sample` call is XLA compiling the prefill + decode program, the same
program every time for the same model, batch and length bucket. With the persistent cache
a second call loads the executable from disk instead of compiling it again.

The CLI (kyx/cli.py) turns it on for every command; notebooks call
``kyx.enable_compilation_cache()``. The directory is ``$KYX_COMPILATION_CACHE_DIR``, else
``~/.cache/kyx/jax``; ``KYX_COMPILATION_CACHE=0`` (or false / no / off) leaves JAX's own
setting alone. Programs that compiled in at least ``MIN_COMPILE_SECS`` are written, so the
decode programs of small models (well under a second each on a CPU) are kept too.
"""
from __future__ import annotations

import os

SWITCH_ENV = "KYX_COMPILATION_CACHE"
DIR_ENV = "KYX_COMPILATION_CACHE_DIR"
DEFAULT_DIR = os.path.join("~", ".cache", "kyx", "jax")
MIN_COMPILE_SECS = 0.05   # JAX's default (1 s) would skip every program of tiny / small
OFF = ("0", "false", "no", "off")


def cache_dir() -> str | None:
    """Where compiled programs go: None when ``KYX_COMPILATION_CACHE`` switches it off."""
    if os.environ.get(SWITCH_ENV, "").strip().lower() in OFF:
        return None
    return os.path.expanduser(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default: ``cache_dir()``);
    returns the directory used, or None when switched off by the environment. Programs
    compiled before the call are not written; JAX keeps the first directory it used."""
    path = path if path is not None else cache_dir()
    if path is None:
        return None
    import jax  # here: `kyx --help` / `--version` do not pay for importing JAX

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
