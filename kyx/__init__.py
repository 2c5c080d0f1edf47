"""kyx: pure-functional JAX/Flax LLM research codebase.

`kyx.load(workdir)` returns a loaded model for notebooks; the CLI is `kyx` (kyx/cli.py).
"""
__version__ = "0.1.0"


def load(workdir: str, step: int = -1):
    """Load a trained workdir (config, params, tokenizer); see kyx.api.LoadedModel."""
    from kyx.api import load as _load
    return _load(workdir, step)
