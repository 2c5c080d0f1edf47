"""kyx: pure-functional JAX/Flax LLM research codebase.

`kyx.load(workdir)` returns a loaded model for notebooks; the CLI is `kyx` (kyx/cli.py).
`kyx.enable_compilation_cache()` keeps compiled programs on disk across sessions, as the
CLI does by default (kyx/compilation_cache.py).
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("kyx")  # setup.py owns the number
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not pip-installed
    __version__ = "0+unknown"


def load(workdir: str, step: int = -1, quantize: str | None = None):
    """Load a trained workdir (config, params, tokenizer); see kyx.api.LoadedModel.
    ``quantize="int8"``: row-wise int8 matmul weights (kyx/model/quant.py)."""
    from kyx.api import load as _load
    return _load(workdir, step, quantize=quantize)


def enable_compilation_cache(path: str | None = None):
    """JAX's persistent compilation cache in ``path`` or the default directory; see
    kyx/compilation_cache.py. Returns the directory (None: switched off by the environment)."""
    from kyx.compilation_cache import enable_compilation_cache as _enable
    return _enable(path)
