"""kyx: pure-functional JAX/Flax LLM research codebase.

`kyx.load(workdir)` returns a loaded model for notebooks; the CLI is `kyx` (kyx/cli.py).
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("kyx")  # setup.py owns the number
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not pip-installed
    __version__ = "0+unknown"


def load(workdir: str, step: int = -1):
    """Load a trained workdir (config, params, tokenizer); see kyx.api.LoadedModel."""
    from kyx.api import load as _load
    return _load(workdir, step)
